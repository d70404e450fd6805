"""Exports a training run's inference function with jax.export: the weights and the normalisation are folded in,
and the batch size is left free. The file runs with jax alone, without this package, on CPUs and CUDA GPUs by
default; a JSON file beside it (model.bin.json) lists the input shape and the class names. Without --out, both go
inside the run: DIR/export/model.bin and DIR/export/model.bin.json.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from resnet_jax import export, inference, runtime
from resnet_jax.tools import common, run_arguments

DEFAULT_OUT = "export/model.bin"  # under the run's workdir


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("export", __doc__)
    run_arguments.add_run_arguments(parser)
    parser.add_argument("--out", default=None, help=f"file to write (default: DIR/{DEFAULT_OUT})")
    parser.add_argument(
        "--platforms",
        default=",".join(export.DEFAULT_PLATFORMS),
        help=f"comma-separated, of {', '.join(export.PLATFORMS)} (default: {','.join(export.DEFAULT_PLATFORMS)})",
    )
    args = parser.parse_args(argv)
    platforms = common.split_list(args.platforms)
    unknown = sorted(set(platforms) - set(export.PLATFORMS)) if platforms else ["(none)"]
    if unknown:
        parser.error(f"--platforms: {', '.join(unknown)} not known; choose from {', '.join(export.PLATFORMS)}")
    # A file named is checked before the run is restored; the default, inside the run, once it is known to be one.
    out = common.output_file(args.out, "--out", example="model.bin") if args.out else None
    runtime.setup_logging()
    # Writing into the run (DIR/export/), it holds the run's lock from before the weights are read until the files
    # are written, as evaluate does.
    with common.writing_into(args.out or args.workdir, [args.workdir]):
        try:
            run = inference.restore_run(args.workdir, args.checkpoint)
            out = out or common.output_file(Path(args.workdir) / DEFAULT_OUT, "--out", example="model.bin")
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
