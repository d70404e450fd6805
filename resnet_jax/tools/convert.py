"""Converts PyTorch weights into a run, or a run's weights into PyTorch's.

In: `--from FILE --workdir NEW` reads a state_dict (.safetensors; .pth/.pt/.th need torch) of torchvision's
ResNet-18...152, akamaster's CIFAR ResNets, kuangliu's ResNet-18...152 or the seed article's net (the layout is
recognised from the keys, or named with --layout) and writes a run that evaluate, predict, export and train read:
config.json, checkpoints/0 and conversion.json. The input channels (grey or RGB), depth and classes are read from
the file's shapes; a head of another class count than --dataset starts fresh. `--config.data.KEY=VALUE` overrides
choose the run's data (e.g. --config.data.source=files --config.data.files_dir=DIR).

Out: `--workdir RUN --to FILE` (or --out FILE) writes the run's weights (its EMA when it kept one) as a state_dict
that the layout's torch classes load with strict=True: .safetensors needs no torch, .pth does. A .safetensors file
also records the run (model, dataset, data source, input shape, normalisation), so that `--from` brings it back as
it was. A model that no layout's code builds (a plain net, a wide or pre-activation ResNet, other shortcuts than
its layout's) is refused.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from resnet_jax import data, runtime
from resnet_jax.interop import LAYOUTS, InteropError
from resnet_jax.interop.runs import write_converted_run, write_run_weights
from resnet_jax.tools import common, run_arguments

ERRORS = (*run_arguments.ERRORS, InteropError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("convert", __doc__)
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="source", metavar="FILE", help="a PyTorch weight file to convert in")
    direction.add_argument(
        "--to", "--out", dest="target", metavar="FILE", help="write --workdir's weights to this file"
    )
    parser.add_argument("--workdir", required=True, help="the run to write (with --from) or to read (with --to)")
    parser.add_argument(
        "--layout",
        choices=tuple(LAYOUTS),
        default=None,
        help="the file's layout (default: the one the file recorded, else from its keys; with --to, the model's)",
    )
    parser.add_argument(
        "--dataset",
        choices=(*data.DATASETS, data.FOLDER),
        default=None,
        help="with --from: the run's dataset (default: the one a file written by --to recorded, else cifar10; "
        "folder needs --config.data.files_dir=DIR)",
    )
    parser.add_argument(
        "--checkpoint",
        type=run_arguments.checkpoint_argument,
        default="latest",
        help="with --to: latest (default), best or a step number",
    )
    rest, overrides = common.split_config_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    if args.target and overrides:
        parser.error("--config.key=value overrides apply to --from only")
    if args.target and args.dataset:
        parser.error("--dataset applies to --from only (--to writes the run's own)")
    if args.dataset == data.FOLDER:
        overrides = [f"data.source={data.FOLDER}", *overrides]
    runtime.setup_logging()
    try:
        if args.source:
            record = write_converted_run(args.source, args.workdir, args.dataset, args.layout, overrides)
            head = (
                "converted"
                if record["head"] == "converted"
                else f"fresh ({record['source_classes']} classes in the file)"
            )
            print(
                f"converted {args.source} ({record['layout']} layout) into {args.workdir}: {record['model']} on "
                f"{record['dataset']}, {record['classes']} classes, {record['channels']}-channel input, head {head}; "
                "config.json, checkpoints/0, conversion.json"
            )
        else:
            # A file inside a run (its own, or another's) is written under that run's lock, as every tool's is.
            with common.writing_into(args.target, [args.workdir], "--to"):
                path, layout, run = write_run_weights(args.workdir, args.target, args.checkpoint, args.layout)
            channels = run.input_shape[-1]
            grey = (
                f"; its conv1 takes {channels}-channel images: build the torch model's conv1 with in_channels="
                f"{channels} before load_state_dict"
                if channels != 3
                else ""
            )
            kept = "with the run recorded in its metadata" if path.suffix == ".safetensors" else "no metadata in .pth"
            print(
                f"wrote {run.config.model.name} (checkpoint {run.step}) of {args.workdir} to {path} in the "
                f"{layout.name} layout ({layout.description}), {kept}; {path.stat().st_size:,} bytes{grey}"
            )
    except ERRORS as error:
        common.fail(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
