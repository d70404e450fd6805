"""Lists the model zoo as a Markdown table of parameters and forward FLOPs per image, a row as soon as it is
measured (rows are kept in a cache, so the next listing is instant), then the plain networks' counts against their
residual twins'; or with --model NAME prints one model's layer-by-layer summary (flax's nn.tabulate).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import atomic, models
from resnet_jax.tools import common


def cache_dir() -> Path:
    """Where measured rows are kept: counting FLOPs lowers each model, 20 s for the deepest on a CPU."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet-jax" / "models"


def _row_key(name: str, image_shape: Sequence[int], num_classes: int) -> str:
    """A row's cache key: the model, its input and head, the models package's sources and the jax and flax that
    measured it."""
    what = json.dumps([name, list(image_shape), num_classes, jax.__version__, flax.__version__]).encode()
    sources = sorted(Path(models.__file__).parent.glob("*.py"))
    return hashlib.sha256(b"".join(path.read_bytes() for path in sources) + what).hexdigest()[:32]


def measure_row(name: str, image_shape: Sequence[int], num_classes: int, cache: bool = True) -> tuple[int, float]:
    """(parameters, forward FLOPs per image) of a registry model; from the cache when the same code measured it."""
    path = cache_dir() / f"{_row_key(name, image_shape, num_classes)}.json"
    if cache:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # no row, or a damaged one: measure
            row = json.loads(path.read_text())
            return int(row["params"]), float(row["flops"])
    model = models.get_model(name, num_classes=num_classes)
    params = models.count_params(models.init_shapes(model, image_shape)["params"])
    flops = models.forward_flops(model, image_shape)
    if cache:
        with contextlib.suppress(OSError):  # a cache it cannot write only costs the next call the time again
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(path, json.dumps({"params": params, "flops": flops}))
    return params, flops


def print_registry_table(
    names: Sequence[str], image_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10, cache: bool = True
) -> None:
    """A Markdown table of parameters and forward FLOPs, a row printed as soon as it is measured (or read from the
    cache of earlier calls)."""
    print("| model | params | forward GFLOPs / image |\n|---|---:|---:|", flush=True)
    counts = {}
    for name in names:
        params, flops = measure_row(name, image_shape, num_classes, cache)
        counts[name] = params
        print(f"| {name} | {params:,} | {flops / 1e9:.3f} |", flush=True)
    plain = [(name, twin) for name, twin in models.RESIDUAL_TWINS.items() if name in counts and twin in counts]
    if plain:
        print("\n| plain network | params | residual twin | params | the twin's extra (its projections) |")
        print("|---|---:|---|---:|---:|")
        for name, twin in plain:
            print(f"| {name} | {counts[name]:,} | {twin} | {counts[twin]:,} | {counts[twin] - counts[name]:,} |")


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
    parser.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help=f"measure every row again instead of reading the rows kept in {cache_dir()}",
    )
    args = parser.parse_args(argv)
    for flag, value in (("--num-classes", args.num_classes), ("--image-size", args.image_size)):
        if value < 1:
            parser.error(f"{flag}={value} must be at least 1")
    if args.channels not in (1, 3):
        parser.error(f"--channels={args.channels} must be 1 or 3")
    image_shape = (args.image_size, args.image_size, args.channels)
    if args.model is None:
        print_registry_table(list(models.MODEL_REGISTRY), image_shape, args.num_classes, args.cache)
    elif args.model not in models.MODEL_REGISTRY:
        common.fail(f"unknown model {args.model!r}; choose one of {', '.join(models.MODEL_REGISTRY)}")
    else:
        print_summary(args.model, image_shape, args.num_classes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
