"""Converts PyTorch weights into a run, or a run's weights into PyTorch's.

In: `--from FILE --workdir NEW` reads a state_dict (.safetensors; .pth/.pt/.th need torch) of torchvision's
ResNet-18...152, akamaster's CIFAR ResNets, kuangliu's ResNet-18...152 or the seed article's net (the layout is
recognised from the keys, or named with --layout) and writes a run that evaluate, predict, export and train read:
config.json, checkpoints/0 and conversion.json. A head of another class count than --dataset starts fresh.

Out: `--workdir RUN --to FILE` writes the run's weights (its EMA when it kept one) as a state_dict that the
layout's torch classes load with strict=True: .safetensors needs no torch, .pth does.
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
    direction.add_argument("--to", dest="target", metavar="FILE", help="write --workdir's weights to this file")
    parser.add_argument("--workdir", required=True, help="the run to write (with --from) or to read (with --to)")
    parser.add_argument(
        "--layout", choices=tuple(LAYOUTS), default=None, help="the file's layout (default: from its keys / the model)"
    )
    parser.add_argument(
        "--dataset",
        choices=tuple(data.DATASETS),
        default="cifar10",
        help="with --from: the run's dataset (default cifar10)",
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
                f"{args.dataset}, {record['classes']} classes, head {head}; config.json, checkpoints/0, "
                "conversion.json"
            )
        else:
            path, layout, run = write_run_weights(args.workdir, args.target, args.checkpoint, args.layout)
            print(
                f"wrote {run.config.model.name} (checkpoint {run.step}) of {args.workdir} to {path} in the "
                f"{layout.name} layout ({layout.description}); {path.stat().st_size:,} bytes"
            )
    except ERRORS as error:
        common.fail(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
