"""The PyTorch layouts this zoo's weights map onto: torchvision's ImageNet ResNets, akamaster's CIFAR ResNets
(option A), kuangliu's pytorch-cifar ResNets (option B) and the seed article's net. Each maps one key of a torch
`state_dict` to one variable here, both ways, with the transposes between PyTorch's OIHW and Flax's HWIO; a
`state_dict` is recognised by its keys and shapes, and one that fits no layout is named by its first wrong key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from resnet_jax import models


class InteropError(RuntimeError):
    """A file or run that cannot cross between frameworks; the message is one line naming the key or the file."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one PyTorch code base names a ResNet's weights, and which zoo models it can express."""

    name: str
    description: str
    head: str  # the classifier's module name
    shortcut: str | None  # the projection's Sequential (conv at .0, BN at .1); None: option A, no parameters
    model_names: tuple[str, ...]  # the zoo models written in this layout
    # The input normalisation the layout's own training code uses (per channel, on a 0-1 scale).
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "torchvision",
            "torchvision.models.resnet18 ... resnet152 (ImageNet stem)",
            "fc",
            "downsample",
            tuple(f"resnet{depth}_imagenet" for depth in (18, 34, 50, 101, 152)),
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        # akamaster's trainer normalises CIFAR-10 with ImageNet's statistics.
        Layout(
            "akamaster",
            "akamaster/pytorch_resnet_cifar10 resnet20 ... resnet1202 (option A shortcuts)",
            "linear",
            None,
            ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202", "resnet8", "resnet8_tiny"),
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        Layout(
            "kuangliu",
            "kuangliu/pytorch-cifar ResNet18 ... ResNet152 (CIFAR stem, option B shortcuts)",
            "linear",
            "shortcut",
            ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
            (0.4914, 0.4822, 0.4465),
            (0.2023, 0.1994, 0.2010),
        ),
        Layout(
            "seed",
            "the seed article's ResNet (BasicBlock [2, 2, 2], conv biases)",
            "linear",
            "shortcut",
            ("seed_resnet",),
            (0.5, 0.5, 0.5),
            (0.5, 0.5, 0.5),
        ),
    )
}

_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")
_NUMBERED = re.compile(r"(Conv|BatchNorm)_(\d+)$")
_BN_STATS = {"mean": "running_mean", "var": "running_var"}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One torch key and the variable it holds here: `path` is (collection, module..., leaf)."""

    torch_key: str
    path: tuple[str, ...]
    kind: str  # "conv" (OIHW <-> HWIO), "dense" (out,in <-> in,out) or "vector"

    def to_flax(self, value: np.ndarray) -> np.ndarray:
        if self.kind == "conv":
            return np.transpose(value, (2, 3, 1, 0))
        return value.T if self.kind == "dense" else value

    def to_torch(self, value: np.ndarray) -> np.ndarray:
        if self.kind == "conv":
            return np.transpose(value, (3, 2, 0, 1))
        return value.T if self.kind == "dense" else value

    def torch_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.to_torch(np.empty(flax_shape, np.int8)).shape


def _torch_module(modules: tuple[str, ...], layout: Layout) -> str:
    """The torch module name of a Flax module path, e.g. ("stage2_block1", "Conv_0") -> "layer2.0.conv1"."""
    top = {"stem_conv": "conv1", "stem_bn": "bn1", "head": layout.head}
    if len(modules) == 1 and modules[0] in top:
        return top[modules[0]]
    block = _BLOCK.match(modules[0]) if len(modules) == 2 else None
    if block is None:
        raise InteropError(f"the {layout.name} layout has no place for {'/'.join(modules)}")
    prefix = f"layer{block[1]}.{int(block[2]) - 1}"
    numbered = _NUMBERED.match(modules[1])
    if numbered:
        return f"{prefix}.{'conv' if numbered[1] == 'Conv' else 'bn'}{int(numbered[2]) + 1}"
    if modules[1] in ("shortcut_conv", "shortcut_bn") and layout.shortcut:
        return f"{prefix}.{layout.shortcut}.{0 if modules[1] == 'shortcut_conv' else 1}"
    reason = " (its shortcuts are option A, parameter-free)" if layout.shortcut is None else ""
    raise InteropError(f"the {layout.name} layout{reason} has no place for {'/'.join(modules)}")


def entries(shapes: Mapping[str, Any], layout: Layout) -> list[Entry]:
    """Every torch key of a model whose variables have `shapes` ({"params", "batch_stats"} trees), in `layout`."""
    found = []

    def visit(path: tuple[str, ...], node: Any) -> None:
        if isinstance(node, Mapping):
            for key in node:
                visit((*path, key), node[key])
            return
        collection, *modules, leaf = path
        module = _torch_module(tuple(modules), layout)
        if collection == "batch_stats":
            found.append(Entry(f"{module}.{_BN_STATS[leaf]}", path, "vector"))
        elif leaf == "kernel":
            found.append(Entry(f"{module}.weight", path, "conv" if len(node.shape) == 4 else "dense"))
        else:  # a BN's scale, or any bias
            found.append(Entry(f"{module}.{'weight' if leaf == 'scale' else 'bias'}", path, "vector"))

    visit((), {"params": shapes["params"], "batch_stats": shapes["batch_stats"]})
    return found


def bn_modules(table: list[Entry]) -> list[str]:
    """The torch BatchNorm modules of a table: each also keeps a `num_batches_tracked` counter."""
    return sorted({entry.torch_key.rsplit(".", 1)[0] for entry in table if entry.torch_key.endswith(".running_var")})


def _stage_sizes(keys: set[str], stages: int = 4) -> tuple[int, ...]:
    """Blocks per stage of a torch ResNet's keys (`layer2.3.conv1.weight` is stage 2's fourth block)."""
    return tuple(
        len({key.split(".")[1] for key in keys if key.startswith(f"layer{stage}.")}) for stage in range(1, stages + 1)
    )


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(np.shape(value))


def expected_keys(model_name: str, num_classes: int, layout: Layout, channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Each key a `model_name` state_dict has in `layout`, with its torch shape (BN counters included), for images
    of `channels` channels (3: RGB, 1: grey)."""
    check_has_shortcuts(model_name)
    shapes = models.init_shapes(models.get_model(model_name, num_classes=num_classes), (32, 32, channels))
    table = entries(shapes, layout)
    expected = {entry.torch_key: entry.torch_shape(_leaf(shapes, entry.path).shape) for entry in table}
    return expected | {f"{module}.num_batches_tracked": () for module in bn_modules(table)}


def _leaf(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _model_for(state_dict: Mapping[str, Any], layout: Layout) -> tuple[str, int] | str:
    """The zoo model and class count a state_dict's keys describe in `layout`, or why there is none."""
    head = f"{layout.head}.weight"
    if head not in state_dict or len(_shape_of(state_dict[head])) != 2:
        return f"missing {head} (classes, features)"
    if "conv1.weight" not in state_dict or len(_shape_of(state_dict["conv1.weight"])) != 4:
        return "missing conv1.weight (out, in, height, width)"
    keys = set(state_dict)
    signature = (
        _stage_sizes(keys),
        "layer1.0.conv3.weight" in keys,
        _shape_of(state_dict["conv1.weight"])[0],
    )
    for name in layout.model_names:
        model = models.get_model(name)
        stages = tuple(model.stage_sizes) + (0,) * (4 - len(model.stage_sizes))
        bottleneck = model.block_cls is models.BottleneckBlock
        if (stages, bottleneck, model.stem_width or model.widths[0]) == signature:
            return name, _shape_of(state_dict[head])[0]
    sizes = tuple(size for size in signature[0] if size)
    return (
        f"blocks per stage {sizes}{' (bottleneck)' if signature[1] else ''} with a {signature[2]}-channel stem match "
        f"none of its models ({', '.join(layout.model_names)})"
    )


def first_misfit(state_dict: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> str | None:
    """The first key a state_dict lacks, holds in another shape, or holds beyond `expected`, with its shape."""
    for key, shape in expected.items():
        if key not in state_dict:
            if not key.endswith(".num_batches_tracked"):  # torch before 0.4.1 wrote none
                return f"missing {key} {shape}"
        elif _shape_of(state_dict[key]) != shape:
            return f"{key} is {_shape_of(state_dict[key])}, expected {shape}"
    extra = next((key for key in state_dict if key not in expected), None)
    return None if extra is None else f"unexpected {extra} {_shape_of(state_dict[extra])}"


@dataclasses.dataclass(frozen=True)
class Match:
    layout: Layout
    model_name: str
    num_classes: int
    channels: int = 3  # of the images its first conv takes: 3 (RGB) or 1 (grey)


def match(state_dict: Mapping[str, Any], layout_name: str | None = None) -> Match:
    """The layout (the one named, else the one that fits), zoo model and class count of a state_dict; else an
    InteropError naming the first misfit key of the nearest layout."""
    if layout_name is not None and layout_name not in LAYOUTS:
        raise InteropError(f"unknown layout {layout_name!r}; choose one of {', '.join(LAYOUTS)}")
    candidates = [LAYOUTS[layout_name]] if layout_name else list(LAYOUTS.values())
    problems = []
    for layout in candidates:
        found = _model_for(state_dict, layout)
        if isinstance(found, str):
            problems.append((0, layout, found))
            continue
        name, num_classes = found
        channels = _shape_of(state_dict["conv1.weight"])[1]
        if channels not in (1, 3):
            problems.append((0, layout, f"conv1.weight takes {channels}-channel images; a run's take 1 or 3"))
            continue
        expected = expected_keys(name, num_classes, layout, channels)
        problem = first_misfit(state_dict, expected)
        if problem is None:
            return Match(layout, name, num_classes, channels)
        problems.append((len(set(state_dict) & set(expected)), layout, f"as {name}: {problem}"))
    _, layout, problem = max(problems, key=lambda item: item[0])
    where = f"the {layout.name} layout" if layout_name else f"no known layout; nearest, {layout.name}"
    raise InteropError(f"the weights fit {where}, {problem}")


def to_variables(state_dict: Mapping[str, np.ndarray], found: Match) -> dict[str, Any]:
    """The `{"params", "batch_stats"}` trees (float32 numpy) of a state_dict that `match` accepted."""
    shapes = models.init_shapes(models.get_model(found.model_name, num_classes=found.num_classes))
    variables: dict[str, Any] = {}
    for entry in entries(shapes, found.layout):
        value = np.asarray(state_dict[entry.torch_key])
        if not np.issubdtype(value.dtype, np.floating):
            raise InteropError(f"{entry.torch_key} holds {value.dtype} values; weights must be floating point")
        _check_values(entry.torch_key, value)
        node = variables
        for key in entry.path[:-1]:
            node = node.setdefault(key, {})
        node[entry.path[-1]] = np.ascontiguousarray(entry.to_flax(value.astype(np.float32)))
    return variables


def _check_values(key: str, value: np.ndarray) -> None:
    """Refuses values no network could run on: they would turn every logit to NaN, or (a negative variance) make
    inference-mode BatchNorm take the square root of a negative number, and nothing downstream would say why."""
    bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
    if bad:
        raise InteropError(
            f"{key} holds {bad} NaN or infinite value{'' if bad == 1 else 's'} (of {np.size(value):,}); the file is "
            "damaged or its run diverged: convert weights saved before it did"
        )
    if key.endswith(f".{_BN_STATS['var']}"):
        negative = int(np.count_nonzero(value < 0))
        if negative:
            raise InteropError(
                f"{key} holds {negative} negative variance{'' if negative == 1 else 's'} (of {np.size(value):,}); "
                "a variance is never below 0, so the file is damaged: convert another"
            )


def to_state_dict(variables: Mapping[str, Any], layout: Layout, batches_tracked: int = 0) -> dict[str, np.ndarray]:
    """A torch state_dict (numpy arrays, in torch's shapes) of `{"params", "batch_stats"}` trees, with each BN's
    `num_batches_tracked` set to `batches_tracked` (torch reads it only for BN momentum None)."""
    table = entries(variables, layout)
    state_dict = {
        entry.torch_key: np.ascontiguousarray(entry.to_torch(np.asarray(_leaf(variables, entry.path), np.float32)))
        for entry in table
    }
    counters = {f"{module}.num_batches_tracked": np.asarray(batches_tracked, np.int64) for module in bn_modules(table)}
    return dict(sorted((state_dict | counters).items(), key=lambda item: torch_order(item[0])))


def torch_order(key: str) -> list[Any]:
    """Sort key that puts layer2 before layer10 and block 9 before block 10, as torch's own order does."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def check_has_shortcuts(model_name: str) -> None:
    """Refuses a plain network: its weights have a residual twin's names and shapes, so a layout would take them
    for that twin's, and a torch loader would run them with shortcuts."""
    if model_name in models.RESIDUAL_TWINS:
        raise InteropError(
            f"{model_name} is a plain network (no shortcuts), which no PyTorch layout holds; it cannot be converted"
        )


def check_layout_holds(model_name: str, layout: Layout) -> None:
    """Refuses a zoo model that `layout`'s own code does not build: its file would load into no torch class of it."""
    check_has_shortcuts(model_name)
    if model_name not in layout.model_names:
        own = next((other.name for other in LAYOUTS.values() if model_name in other.model_names), None)
        fix = f"use its own, --layout {own}" if own else "no layout holds it, so it cannot be converted"
        raise InteropError(
            f"the {layout.name} layout's code builds {', '.join(layout.model_names)}, not {model_name}; {fix}"
        )


def layout_for_model(model_name: str) -> Layout:
    """The layout a zoo model is written in by default (e.g. resnet20: akamaster's)."""
    for layout in LAYOUTS.values():
        if model_name in layout.model_names:
            return layout
    covered = [name for layout in LAYOUTS.values() for name in layout.model_names]
    raise InteropError(f"{model_name} has no PyTorch layout; the layouts cover {', '.join(covered)}")
