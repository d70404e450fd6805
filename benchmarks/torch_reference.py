"""The same networks in PyTorch, after the seed article's code, timed against this project's train step in ONE
process: same architecture (parameter counts asserted equal, weights copied over and the logits compared), same
optimizer, same batch, same on-device augmentation, data resident on the device, windows taken in turns.

    python -m benchmarks.torch_reference --models resnet20 --batches 128

Variants: eager (NCHW float32), channels_last, bf16_autocast (channels_last + bfloat16 autocast), compile
(channels_last + torch.compile), compile_bf16, compile_bf16_cudagraphs (mode="reduce-overhead"). PyTorch is the
optional extra `bench` (`pip install -e '.[bench]'`); nothing else imports this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from resnet_jax import augment, data, models, optim

WEIGHT_DECAY = 1e-4


@dataclasses.dataclass(frozen=True)
class Variant:
    channels_last: bool
    bf16: bool
    compile_mode: str | None = None  # torch.compile mode; None runs eagerly


VARIANTS = {
    "eager": Variant(False, False),
    "channels_last": Variant(True, False),
    "bf16_autocast": Variant(True, True),
    "compile": Variant(True, False, "default"),
    "compile_bf16": Variant(True, True, "default"),
    "compile_bf16_cudagraphs": Variant(True, True, "reduce-overhead"),
}


def import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise SystemExit(
            "benchmarks/torch_reference.py needs PyTorch, which is not installed: "
            "pip install -e '.[bench]' (a CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
        ) from None
    return torch


# ----------------------------------------------------------------------------------------------------------------
# The networks.


def build_torch_resnet(spec: models.ResNet, in_channels: int = 3) -> Any:
    """A PyTorch network computing the same function as the Flax `spec`: the seed article's BasicBlock
    (conv-BN-ReLU-conv-BN, plus shortcut, ReLU), its CIFAR stem and head, with He et al.'s option-A shortcut where
    `spec` asks for it. Module names follow the Flax parameter names, so that weights can be copied across."""
    torch = import_torch()
    nn, functional = torch.nn, torch.nn.functional
    if spec.block_cls is not models.BasicBlock or spec.stem != "cifar" or spec.dropout_rate:
        raise SystemExit(f"torch_reference builds post-activation BasicBlock CIFAR ResNets only, not {spec!r}")
    bn_momentum = 1.0 - spec.bn_momentum  # PyTorch weighs the new statistics, Flax the old ones

    def norm(features: int) -> Any:
        return nn.BatchNorm2d(features, eps=spec.bn_epsilon, momentum=bn_momentum)

    class BasicBlock(nn.Module):
        def __init__(self, in_features: int, features: int, stride: int):
            super().__init__()
            self.Conv_0 = nn.Conv2d(in_features, features, 3, stride, 1, bias=spec.conv_bias)
            self.BatchNorm_0 = norm(features)
            self.Conv_1 = nn.Conv2d(features, features, 3, 1, 1, bias=spec.conv_bias)
            self.BatchNorm_1 = norm(features)
            self.stride, self.features = stride, features
            self.projects = stride != 1 or in_features != features
            if self.projects and spec.shortcut == "B":
                self.shortcut_conv = nn.Conv2d(in_features, features, 1, stride, bias=spec.conv_bias)
                self.shortcut_bn = norm(features)

        def shortcut(self, x):
            if not self.projects:
                return x
            if spec.shortcut == "B":
                return self.shortcut_bn(self.shortcut_conv(x))
            x = x[:, :, :: self.stride, :: self.stride]
            extra = self.features - x.shape[1]
            return functional.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))

        def forward(self, x):
            y = functional.relu(self.BatchNorm_0(self.Conv_0(x)))
            y = self.BatchNorm_1(self.Conv_1(y))
            return functional.relu(y + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            stem_width = spec.stem_width or spec.widths[0]
            self.stem_conv = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
            self.stem_bn = norm(stem_width)
            self.block_names = []
            in_features = stem_width
            for stage, (blocks, width) in enumerate(zip(spec.stage_sizes, spec.widths, strict=True)):
                for index in range(blocks):
                    name = f"stage{stage + 1}_block{index + 1}"
                    setattr(self, name, BasicBlock(in_features, width, 2 if stage > 0 and index == 0 else 1))
                    self.block_names.append(name)
                    in_features = width
            self.head = nn.Linear(in_features, spec.num_classes)

        def forward(self, x):
            x = functional.relu(self.stem_bn(self.stem_conv(x)))
            for name in self.block_names:
                x = getattr(self, name)(x)
            return self.head(x.mean((2, 3)))

    return ResNet()


def copy_flax_variables(net: Any, variables: dict[str, Any]) -> None:
    """Loads Flax params and batch_stats into the PyTorch network (HWIO kernels become OIHW)."""
    torch = import_torch()
    renames = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    state = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables[collection])[0]:
            names = [entry.key for entry in path]
            value = np.asarray(leaf, np.float32)
            if value.ndim == 4:
                value = value.transpose(3, 2, 0, 1)
            elif value.ndim == 2:
                value = value.T
            state[".".join([*names[:-1], renames[names[-1]]])] = torch.from_numpy(np.array(value, copy=True))
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"weights do not map between Flax and PyTorch: missing {missing}, unexpected {unexpected}")


def sgd(
    torch: Any,
    net: Any,
    learning_rate: float = 0.1,
    weight_decay: float = WEIGHT_DECAY,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> Any:
    """SGD with momentum and L2 weight decay on conv and dense kernels only, as `optim.make_optimizer`."""
    decay = [p for name, p in net.named_parameters() if name.endswith("weight") and p.ndim > 1]
    rest = [p for name, p in net.named_parameters() if not (name.endswith("weight") and p.ndim > 1)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=nesterov)


# ----------------------------------------------------------------------------------------------------------------
# The check that both sides compute the same thing.


def check_equivalence(name: str, device: str, batch: int = 16) -> dict[str, Any]:
    """Parameter counts (must be equal), forward FLOPs, and on the same batch with the same weights: the logits
    and the loss before and after one SGD step, in float32 at full precision on both sides."""
    torch = import_torch()
    spec = models.get_model(name)
    net = build_torch_resnet(spec)
    ours = models.count_params(models.init_shapes(spec)["params"])
    theirs = sum(p.numel() for p in net.parameters())
    if ours != theirs:
        raise SystemExit(
            f"{name}: {ours:,} parameters in JAX but {theirs:,} in PyTorch; the comparison would be unfair"
        )
    variables = spec.init(jax.random.key(0), jnp.zeros((1, *common.IMAGE_SHAPE)), train=False)
    copy_flax_variables(net, variables)
    arrays = common.synthetic_images(batch, seed=1)
    info = data.get_dataset_info("cifar10")
    inputs = augment.normalize(jnp.asarray(arrays.images), info.mean, info.std)
    labels = jnp.asarray(arrays.labels)

    def loss_fn(params, batch_stats):
        logits, _ = spec.apply(
            {"params": params, "batch_stats": batch_stats}, inputs, train=True, mutable=["batch_stats"]
        )
        return optim.cross_entropy(logits, labels).mean(), logits

    optimizer_config = common.bench_config(name, batch, "float32", 1, batch).optimizer
    optimizer_config.weight_decay = WEIGHT_DECAY
    tx = optim.make_optimizer(optimizer_config, optax.constant_schedule(optimizer_config.learning_rate))
    with jax.default_matmul_precision("highest"):
        (loss_before, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables["params"], variables["batch_stats"]
        )
        updates, _ = tx.update(grads, tx.init(variables["params"]), variables["params"], step=jnp.int32(0))
        params = jax.tree.map(jnp.add, variables["params"], updates)
        loss_after = loss_fn(params, variables["batch_stats"])[0]

    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        net = net.to(device).train()
        x = torch.from_numpy(np.array(inputs)).permute(0, 3, 1, 2).contiguous().to(device)
        y = torch.from_numpy(np.array(labels)).long().to(device)
        optimizer = sgd(torch, net)
        torch_logits = net(x)
        torch_before = torch.nn.functional.cross_entropy(torch_logits, y)
        optimizer.zero_grad()
        torch_before.backward()
        optimizer.step()
        torch_after = torch.nn.functional.cross_entropy(net(x), y)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    reference = np.asarray(logits)
    logits_error = float(
        np.linalg.norm(torch_logits.detach().cpu().numpy() - reference) / max(np.linalg.norm(reference), 1e-12)
    )
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        build_torch_resnet(spec).eval()(torch.zeros(1, 3, *common.IMAGE_SHAPE[:2]))
    result = {
        "model": name,
        "parameters": ours,
        "torch_parameters": theirs,
        "forward_gflops_per_image_xla": models.forward_flops(spec) / 1e9,
        "forward_gflops_per_image_torch": counter.get_total_flops() / 1e9,
        "logits_relative_error": logits_error,
        "loss_before": (float(loss_before), torch_before.item()),
        "loss_after_one_step": (float(loss_after), torch_after.item()),
    }
    if not logits_error < 1e-3 or not abs(float(loss_after) - torch_after.item()) < 1e-3 * float(loss_after):
        raise SystemExit(f"{name}: JAX and PyTorch disagree on the same weights and batch: {result}")
    return result


# ----------------------------------------------------------------------------------------------------------------
# The PyTorch train step.


class TorchTrainLoop:
    """One PyTorch train step per unit: gather the next shuffled batch from the device-resident uint8 split,
    pad-crop and flip it on the device (one gather), normalise, forward, cross-entropy, backward, SGD."""

    steps_per_unit = 1

    def __init__(
        self,
        name: str,
        batch: int,
        variant: Variant,
        device: str,
        arrays: data.SplitArrays,
        threads: int = 0,
        seed: int = 0,
    ):
        torch = self.torch = import_torch()
        self.threads = threads or torch.get_num_threads()
        spec = models.get_model(name)
        net = build_torch_resnet(spec)
        copy_flax_variables(net, spec.init(jax.random.key(seed), jnp.zeros((1, *common.IMAGE_SHAPE)), train=False))
        net = net.to(device).train()
        if variant.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net, self.variant, self.device, self.batch = net, variant, device, batch
        self.optimizer = sgd(torch, net)
        self.images = torch.from_numpy(arrays.images).to(device)
        self.labels = torch.from_numpy(arrays.labels).long().to(device)
        info = data.get_dataset_info("cifar10")
        self.shift = torch.tensor(info.mean, device=device) * 255.0
        self.scale = torch.tensor(info.std, device=device) * 255.0
        generator = torch.Generator(device=device).manual_seed(seed)
        self.permutation = torch.randperm(len(arrays), device=device, generator=generator)
        self.steps_per_epoch, self.position = len(arrays) // batch, 0
        self.loss_sum = torch.zeros((), device=device)
        self.forward_loss = self._forward_loss
        if variant.compile_mode:
            self.forward_loss = torch.compile(self._forward_loss, mode=variant.compile_mode)

    def _forward_loss(self, inputs, labels):
        with self.torch.autocast(self.device.split(":")[0], dtype=self.torch.bfloat16, enabled=self.variant.bf16):
            logits = self.net(inputs)
        return self.torch.nn.functional.cross_entropy(logits.float(), labels)

    def _augment(self, images):
        torch = self.torch
        count, height, width, _ = images.shape
        padded = torch.nn.functional.pad(images, (0, 0, 4, 4, 4, 4))
        offsets = torch.randint(0, 9, (count, 2), device=self.device)
        flip = torch.rand(count, device=self.device) < 0.5
        rows = torch.arange(height, device=self.device)
        cols = torch.arange(width, device=self.device)
        rows = offsets[:, :1] + rows
        cols = offsets[:, 1:] + torch.where(flip[:, None], width - 1 - cols, cols)
        index = torch.arange(count, device=self.device)[:, None, None]
        crops = padded[index, rows[:, :, None], cols[:, None, :]]
        inputs = ((crops.float() - self.shift) / self.scale).permute(0, 3, 1, 2)
        memory_format = torch.channels_last if self.variant.channels_last else torch.contiguous_format
        return inputs.contiguous(memory_format=memory_format)

    def step(self) -> None:
        start = self.position * self.batch
        indices = self.permutation[start : start + self.batch]
        self.position = (self.position + 1) % self.steps_per_epoch
        loss = self.forward_loss(self._augment(self.images[indices]), self.labels[indices])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach()

    def run(self, units: int) -> None:
        self.torch.set_num_threads(self.threads)
        for _ in range(units):
            self.step()
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def first_call_seconds(self) -> float:
        start = time.perf_counter()
        self.run(1)
        return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# The comparison.

HEADERS = ("runner", "images/s", "ms/step", "spread", "first call s", "x torch channels_last", "x best torch")


def compare(args: argparse.Namespace, name: str, batch: int, device: str, arrays: data.SplitArrays) -> dict:
    """Builds every runner for one model and batch, then times them in turns."""
    runners: dict[str, common.Runner] = {}
    first_calls: dict[str, float] = {}
    errors: dict[str, str] = {}
    for spec in args.jax:
        label = f"jax {spec}"
        runners[label] = common.jax_runner(spec, name, batch, args.steps_per_call, len(arrays))
        first_calls[label] = runners[label].first_call_seconds()
    for variant in args.variants:
        label = f"torch {variant}"
        kind, _, threads = variant.partition("@")
        if args.build_budget_seconds and time.perf_counter() - args.start > args.build_budget_seconds:
            errors[label] = f"not built: {args.build_budget_seconds:.0f} s into the run, no time left to compile"
            print(f"{name} batch {batch} {label}: {errors[label]}", flush=True)
            continue
        try:
            runner = TorchTrainLoop(name, batch, VARIANTS[kind], device, arrays, int(threads or 0))
            first_calls[label] = runner.first_call_seconds()
            runners[label] = runner
        except Exception as error:  # e.g. torch.compile without a working compiler: reported, not fatal
            errors[label] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            print(f"{name} batch {batch} {label}: {errors[label]}", flush=True)
    deadline = args.start + args.deadline_seconds if args.deadline_seconds else None
    timings = common.interleaved_timings(runners, args.windows, args.min_window_seconds, deadline)
    per_second = {label: batch / timing.seconds_per_step for label, timing in timings.items()}
    torch_rates = {label: rate for label, rate in per_second.items() if label.startswith("torch")}
    best_torch = max(torch_rates, key=torch_rates.get) if torch_rates else None
    baseline = per_second.get("torch channels_last", float("nan"))
    rows = [
        [
            label,
            per_second[label],
            timing.seconds_per_step * 1e3,
            f"{timing.spread:.0%}",
            first_calls[label],
            per_second[label] / baseline,
            per_second[label] / torch_rates[best_torch] if best_torch else float("nan"),
        ]
        for label, timing in timings.items()
    ]
    jax_rates = {label: rate for label, rate in per_second.items() if label.startswith("jax")}
    best_jax = max(jax_rates, key=jax_rates.get) if jax_rates else None
    return {
        "model": name,
        "batch": batch,
        "jax_steps_per_call": args.steps_per_call,
        "images_per_second": per_second,
        "window_seconds_per_step": {label: timing.window_seconds for label, timing in timings.items()},
        "first_call_seconds": first_calls,
        "errors": errors,
        "best_torch": best_torch,
        "best_jax": best_jax,
        "best_ratio": jax_rates[best_jax] / torch_rates[best_torch] if best_jax and best_torch else float("nan"),
        "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> None:
    common.use_the_tools_allocator()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20")
    parser.add_argument("--batches", default="128")
    parser.add_argument(
        "--variants", default="", help=f"comma list of {', '.join(VARIANTS)}; NAME@N runs it on N CPU threads"
    )
    parser.add_argument(
        "--jax",
        default="float32,bfloat16",
        help="JAX runners, comma list: DTYPE[+onednn|+onednn_conv][+xla_defaults][+scan|+no_scan][+XLA_OPTION=VALUE]",
    )
    parser.add_argument("--steps-per-call", type=int, default=0, help="JAX steps per call; default 50 / 1 on CPU")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--min-window-seconds", type=float, default=0.0, help="default 1 (accelerator), 3 (CPU)")
    parser.add_argument("--examples", type=int, default=10_240, help="synthetic training examples on the device")
    parser.add_argument("--budget-seconds", type=float, default=0.0, help="skip the comparisons left after this")
    parser.add_argument(
        "--build-budget-seconds", type=float, default=0.0, help="build no more runners this long into the run"
    )
    parser.add_argument(
        "--deadline-seconds", type=float, default=0.0, help="start no timing round this long into the run"
    )
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    args.start = time.perf_counter()
    torch = import_torch()
    accelerator = common.on_accelerator()
    device = "cuda" if accelerator and torch.cuda.is_available() else "cpu"
    if accelerator and device == "cpu":
        raise SystemExit("JAX sees an accelerator but PyTorch does not: install a CUDA build of torch")
    torch.backends.cudnn.benchmark = True
    default_variants = (
        "eager,channels_last,bf16_autocast,compile_bf16"
        if accelerator
        else ("eager,channels_last,bf16_autocast,compile")
    )
    args.variants = common.parse_list(args.variants or default_variants)
    unknown = [variant for variant in args.variants if variant.partition("@")[0] not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    args.jax = common.parse_list(args.jax)
    args.steps_per_call = args.steps_per_call or (50 if accelerator else 1)
    args.min_window_seconds = args.min_window_seconds or (1.0 if accelerator else 3.0)

    env = common.environment() | {
        "torch_threads": torch.get_num_threads(),
        "cudnn_benchmark": True,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    arrays = common.synthetic_images(args.examples)
    checks, comparisons, skipped = [], [], []
    for name in common.parse_list(args.models):
        checks.append(check_equivalence(name, device))
        print(f"check {name}: {checks[-1]}", flush=True)
        for batch in common.parse_list(args.batches, int):
            if args.budget_seconds and time.perf_counter() - args.start > args.budget_seconds:
                skipped.append((name, batch))
                continue
            comparisons.append(compare(args, name, batch, device, arrays))
            print(common.markdown_table(HEADERS, comparisons[-1]["rows"]), flush=True)
            payload = {"environment": env, "checks": checks, "comparisons": comparisons, "skipped": skipped}
            common.write_json(args.json, payload)
            gc.collect()
            jax.clear_caches()

    print(f"\n### JAX against PyTorch (benchmarks/torch_reference.py)\n\n{common.environment_line(env)}")
    print(f"torch threads {env['torch_threads']}, JAX steps per call {args.steps_per_call}\n")
    print(
        common.markdown_table(
            (
                "model",
                "params (both)",
                "fwd GFLOP/img XLA",
                "fwd GFLOP/img torch",
                "logits rel. err",
                "loss after 1 step",
            ),
            [
                [
                    check["model"],
                    f"{check['parameters']:,}",
                    check["forward_gflops_per_image_xla"],
                    check["forward_gflops_per_image_torch"],
                    f"{check['logits_relative_error']:.1e}",
                    "{:.4f} / {:.4f}".format(*check["loss_after_one_step"]),
                ]
                for check in checks
            ],
        )
    )
    for comparison in comparisons:
        print(f"\n{comparison['model']}, batch {comparison['batch']}:\n")
        print(common.markdown_table(HEADERS, comparison["rows"]))
        print(
            f"\nbest JAX ({comparison['best_jax']}) / best PyTorch ({comparison['best_torch']}): "
            f"{comparison['best_ratio']:.2f}x"
        )
    if skipped:
        print(f"\nnot measured (budget): {skipped}")
    common.write_json(args.json, {"environment": env, "checks": checks, "comparisons": comparisons, "skipped": skipped})


if __name__ == "__main__":
    main()
