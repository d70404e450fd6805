"""Plots the training curves of one or more runs from their metrics.jsonl: loss, accuracy and learning rate
against epoch, several runs overlaid with a legend. With one workdir the figure goes to DIR/curves.png.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from resnet_jax import plots
from resnet_jax.tools import common


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("plots", __doc__)
    parser.add_argument("--workdir", nargs="+", required=True, help="one or more training workdirs")
    parser.add_argument(
        "--out",
        default=None,
        help=f"PNG to write (default: DIR/{plots.CURVES_FILE} for one run, ./{plots.CURVES_FILE} for several)",
    )
    args = parser.parse_args(argv)
    single = len(args.workdir) == 1
    out = args.out or (Path(args.workdir[0]) / plots.CURVES_FILE if single else Path(plots.CURVES_FILE))
    try:
        path = plots.write_curves(args.workdir, out)
    except plots.NoMetricsError as error:
        common.fail(error)
    except (OSError, ValueError) as error:
        common.fail(f"cannot plot {', '.join(args.workdir)} into {out}: {error}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
