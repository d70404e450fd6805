"""Plots the training curves of one or more runs from their metrics.jsonl: loss, accuracy and learning rate
against epoch (and each stage's gradient norm, where the runs logged it), several runs overlaid with a legend.
With one workdir the figure goes to DIR/curves.png; with several (--workdir A,B), to A/plots/A_vs_B.png inside the
first run, unless --out names the file.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from resnet_jax import metrics, plots
from resnet_jax.tools import common

DEFAULT_DIR = "plots"  # several runs' figure: a folder inside the first run, one file per set of runs


def default_out(workdirs: Sequence[str | Path]) -> Path:
    """DIR/curves.png for one run; FIRST/plots/<name>_vs_<name>....png for several (inside the first run, never in
    the current folder), so that no two sets share a file."""
    paths = [Path(workdir) for workdir in workdirs]
    if len(paths) == 1:
        return paths[0] / plots.CURVES_FILE
    names = "_vs_".join(path.resolve().name or "root" for path in paths)
    safe = "".join(c if c.isalnum() or c in "._+-" else "-" for c in names)
    return paths[0] / DEFAULT_DIR / f"{safe[:200]}.png"


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("plots", __doc__)
    parser.add_argument(
        "--workdir",
        nargs="+",
        required=True,
        metavar="DIR[,DIR...]",
        help="one or more training workdirs, comma-separated (A,B; A B is also read)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help=f"the figure to write, {', '.join(plots.FIGURE_SUFFIXES)} (default: DIR/{plots.CURVES_FILE} for one "
        f"run, FIRST/{DEFAULT_DIR}/FIRST_vs_SECOND.png inside the first run for several)",
    )
    args = parser.parse_args(argv)
    workdirs = common.split_list(args.workdir)
    # Into a run (DIR/curves.png, FIRST/plots/): its lock is held while its metrics are read and the figure written,
    # so that the figure is of the run the folder holds.
    with common.writing_into(args.out or default_out(workdirs), workdirs):
        try:
            figure = plots.curves_figure(workdirs)
        except (plots.PlotError, metrics.MetricsError) as error:
            common.fail(error)
        out = common.output_file(args.out or default_out(workdirs), "--out", plots.FIGURE_SUFFIXES, "curves")
        try:
            plots.save_figure(figure, out)
        except OSError as error:
            common.fail(common.cannot_write(out, error, "--out"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
