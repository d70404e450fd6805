"""Exports a training run's inference function with jax.export: the weights and the normalisation are folded in,
and the batch size is left free. The file runs with jax alone, without this package, on CPUs and CUDA GPUs by
default; a JSON file beside it (model.bin.json) lists the input shape and the class names.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from resnet_jax import export, inference
from resnet_jax.tools import common, run_arguments


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("export", __doc__)
    run_arguments.add_run_arguments(parser)
    parser.add_argument("--out", required=True, help="file to write, e.g. model.bin")
    parser.add_argument(
        "--platforms",
        default=",".join(export.DEFAULT_PLATFORMS),
        help=f"comma-separated, of {', '.join(export.PLATFORMS)} (default {','.join(export.DEFAULT_PLATFORMS)})",
    )
    args = parser.parse_args(argv)
    platforms = [name.strip() for name in args.platforms.split(",") if name.strip()]
    unknown = sorted(set(platforms) - set(export.PLATFORMS)) if platforms else ["(none)"]
    if unknown:
        parser.error(f"--platforms: {', '.join(unknown)} not known; choose from {', '.join(export.PLATFORMS)}")
    out = common.output_file(args.out, "--out", example="model.bin")
    try:
        run = inference.restore_run(args.workdir, args.checkpoint)
        tta_flip = run_arguments.tta_flip(run, args.tta)
        out_path, description_path = export.write_export(run, out, tta_flip, platforms)
    except run_arguments.ERRORS as error:
        common.fail(error)
    print(
        f"exported {run.config.model.name} (checkpoint {run.step}) for {', '.join(platforms)} to {out_path} "
        f"({out_path.stat().st_size:,} bytes; input uint8 (batch, {', '.join(map(str, run.input_shape))})); "
        f"description in {description_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
