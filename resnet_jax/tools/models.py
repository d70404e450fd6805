"""Lists the model zoo as a Markdown table of parameters and forward FLOPs per image, a row as soon as it is
measured, or with --model NAME prints one model's layer-by-layer summary (flax's nn.tabulate).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import models
from resnet_jax.tools import common


def print_registry_table(names: Sequence[str], image_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10) -> None:
    """A Markdown table of parameters and forward FLOPs, a row printed as soon as it is measured (counting FLOPs
    lowers each model, seconds for the deep ones)."""
    print("| model | params | forward GFLOPs / image |\n|---|---:|---:|", flush=True)
    for name in names:
        model = models.get_model(name, num_classes=num_classes)
        params = models.count_params(models.init_shapes(model, image_shape)["params"])
        print(f"| {name} | {params:,} | {models.forward_flops(model, image_shape) / 1e9:.3f} |", flush=True)


def print_summary(name: str, image_shape: Sequence[int], num_classes: int) -> None:
    """nn.tabulate's table of one model, without terminal colours (it often goes to a file)."""
    model = models.get_model(name, num_classes=num_classes)
    table = nn.tabulate(
        model, jax.random.key(0), compute_flops=True, depth=1, console_kwargs={"width": 160, "force_terminal": False}
    )
    print(table(jnp.zeros((1, *image_shape), jnp.float32), train=False))
    params = models.count_params(models.init_shapes(model, image_shape)["params"])
    # nn.tabulate's total counts BatchNorm's running statistics too; the registry's (and papers') counts do not.
    print(f"{params:,} parameters, without BatchNorm's running statistics (batch_stats) that the total above counts")


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("models", __doc__)
    parser.add_argument("--model", help="print this model's nn.tabulate summary instead of the registry table")
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the head (default 10)")
    parser.add_argument("--image-size", type=int, default=32, help="height and width of the input (default 32)")
    parser.add_argument("--channels", type=int, default=3, help="channels of the input (default 3)")
    args = parser.parse_args(argv)
    for flag, value in (("--num-classes", args.num_classes), ("--image-size", args.image_size)):
        if value < 1:
            parser.error(f"{flag}={value} must be at least 1")
    if args.channels not in (1, 3):
        parser.error(f"--channels={args.channels} must be 1 or 3")
    image_shape = (args.image_size, args.image_size, args.channels)
    if args.model is None:
        print_registry_table(list(models.MODEL_REGISTRY), image_shape, args.num_classes)
    elif args.model not in models.MODEL_REGISTRY:
        common.fail(f"unknown model {args.model!r}; choose one of {', '.join(models.MODEL_REGISTRY)}")
    else:
        print_summary(args.model, image_shape, args.num_classes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
