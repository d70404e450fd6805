"""The seed article's own PyTorch program on Fashion-MNIST, side by side with this project's recipes, in ONE
invocation on the same machine. Every run goes to the end of its fixed-length recipe (nothing stops on test);
reported per run are its final test accuracy (and validation, where the config holds a split out) and its wall
time, and over seeds their mean ± sd (min-max). The seconds at which each finished run's test curve first reached
0.90 and 0.92 are read off afterwards and labelled so: a reading of the curve, never a stopping point.

    python -m benchmarks.seed_reference      # our README recipe (seeds 0, 1, 2), configs/seed_article.py, the seed
    python -m benchmarks.seed_reference --runs seed_torch --epochs 20     # the seed's whole 20 epochs
    python -m benchmarks.seed_reference --runs ours,ours_float32,recipe_torch,recipe_torch_bf16 --our-seeds 0

The seed program is the article's code unchanged except for the data: Fashion-MNIST from the Debian files (one input
channel), on the CPU instead of 'cuda', the article's missing `import torch.nn.functional as F` added, and a test
pass after each epoch (in eval mode, which the article's final test forgot). Adam at its defaults, batch 128,
normalisation (0.5, 0.5), no augmentation, 20 epochs. Our runs are `train.py` itself, as a user starts it, timed from
the command to each evaluation (`ours`: in the config's own dtype; `ours_float32`, `ours_bf16`: in that one);
`recipe_torch` and `recipe_torch_bf16` are our recipe written in PyTorch (`benchmarks/recipe_torch.py`: float32
channels_last, bfloat16 autocast), timed alike from their command. PyTorch is the optional extra `bench`
(`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    import torch
    import torch.nn.functional as F
    from torch import nn, optim
except ImportError:
    raise SystemExit("seed_reference.py needs PyTorch, which is not installed: pip install -e '.[bench]'") from None

from benchmarks import common, fixed_runs
from benchmarks.time_to_accuracy import MetricsWatcher, fashion_mnist_dir
from resnet_jax import data

REPO = Path(__file__).resolve().parents[1]
TARGETS = (0.90, 0.92)


# ----------------------------------------------------------------------------------------------------------------
# The seed article's network, as printed (§4), with a parameter for the input channels.


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()

        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)

        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x):
        y = self.conv1(x)
        y = self.bn1(y)
        y = self.relu(y)
        y = self.conv2(y)
        y = self.bn2(y)

        if hasattr(self, "shortcut"):
            x = self.shortcut(x)

        y += x
        y = self.relu(y)
        return y


class ResNet(nn.Module):
    def __init__(self, block, nblocks, num_classes=10, in_channels=3):
        super().__init__()
        self.in_planes = 16

        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(block, 16, nblocks[0], stride=1)
        self.layer2 = self._make_layer(block, 32, nblocks[1], stride=2)
        self.layer3 = self._make_layer(block, 64, nblocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for stride in strides:
            layers.append(block(self.in_planes, planes, stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = F.avg_pool2d(out, out.shape[-2:])
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


class FashionMNISTFiles(torch.utils.data.Dataset):
    """One split of the Debian files through the article's transform (ToTensor, then Normalize 0.5/0.5), item by
    item as torchvision's datasets apply it."""

    def __init__(self, files_dir: str, split: str):
        arrays = data.load_split("fashion_mnist", split, source="files", files_dir=files_dir, image_size=0)
        self.images = torch.tensor(arrays.images).permute(0, 3, 1, 2)  # uint8 NCHW
        self.labels = torch.tensor(arrays.labels).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.images[index].float() / 255 - 0.5) / 0.5, self.labels[index]


def run_seed_program(files_dir: str, epochs: int, seed: int) -> list[dict[str, float]]:
    """The article's training loop, all `epochs` of it; returns one record per epoch, `seconds` counted from this
    function's start."""
    start = time.perf_counter()
    # The article's two loader workers are forked from this process, which has JAX loaded (for the environment
    # line) but runs nothing of it: the children never touch JAX's threads, so its fork warning does not apply.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    torch.manual_seed(seed)
    trainset = FashionMNISTFiles(files_dir, "train")
    testset = FashionMNISTFiles(files_dir, "test")
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=128, shuffle=True, num_workers=2)
    testloader = torch.utils.data.DataLoader(testset, batch_size=128, shuffle=False, num_workers=2)
    net = ResNet(BasicBlock, [2, 2, 2], in_channels=1)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(net.parameters())

    records = []
    for epoch in range(epochs):
        net.train()
        running_loss, batches = 0.0, 0
        for inputs, labels in trainloader:
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            batches += 1
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for images, labels in testloader:
                predicted = torch.argmax(net(images), dim=-1)
                correct += (predicted == labels).sum().item()
                total += labels.numel()
        record = {
            "epoch": epoch + 1,
            "seconds": time.perf_counter() - start,
            "train_loss": running_loss / batches,
            "test_accuracy": correct / total,
        }
        records.append(record)
        print(f"[seed_torch] {record}", flush=True)
    return records


def run_train_py(name: str, config: str, overrides: Sequence[str]) -> dict[str, Any]:
    """`train.py` as a user runs it, in a fresh workdir, to the end of its recipe. Returns its evaluation records,
    `seconds` counted from the command's start, and the command's whole wall time."""
    with tempfile.TemporaryDirectory(prefix="seed_reference_") as workdir:
        command = [sys.executable, "train.py", "--workdir", workdir, "--config", config, *overrides]
        print(f"[{name}] {' '.join(command)}", flush=True)
        start = time.perf_counter()
        watcher = MetricsWatcher(Path(workdir), start)
        watcher.start()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
        process.wait()
        wall = time.perf_counter() - start
        watcher.stop()
    result = {"records": fixed_runs.evaluations(watcher.records), "wall_seconds": wall}
    if process.returncode:
        # The report still comes: the other runs may have taken most of an hour.
        result["error"] = f"train.py exited with status {process.returncode}"
        print(f"[{name}] {result['error']}", flush=True)
    return result


def run_recipe_torch(name: str, variant: str, config: str, files_dir: str, seed: int) -> dict[str, Any]:
    """`benchmarks/recipe_torch.py` as its own command, to the end of its recipe, timed from the command's start to
    each of its epoch lines and to its end."""
    command = [sys.executable, "-m", "benchmarks.recipe_torch", "--variant", variant, "--config", config]
    command += ["--files-dir", files_dir, "--seed", str(seed)]
    print(f"[{name}] {' '.join(command)}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    records = []
    for line in process.stdout:
        record = {**json.loads(line), "seconds": time.perf_counter() - start}
        records.append(record)
        print(f"[{name}] {record}", flush=True)
    process.wait()
    result = {"records": records, "wall_seconds": time.perf_counter() - start}
    if process.returncode:
        result["error"] = f"recipe_torch exited with status {process.returncode}"
        print(f"[{name}] {result['error']}", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seed_reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--files-dir", default="", help="Fashion-MNIST files; default .data/fashion-mnist or Debian's")
    parser.add_argument("--runs", default="ours,seed_article_jax,seed_torch", help="which runs, in this order")
    parser.add_argument("--config", default="configs/fashion_mnist.py", help="our recipe, the README's main job")
    parser.add_argument("--our-seeds", default="0,1,2", help="our recipe runs once per seed; mean ± sd over them")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the two seed-recipe runs, all of them run")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the two seed-recipe runs")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    files_dir = fashion_mnist_dir(args.files_dir)
    # The seed program uses every core, as PyTorch does by default; so do our runs.
    torch.set_num_threads(os.cpu_count() or 1)
    seed_article_overrides = [
        "--config.data.dataset=fashion_mnist",
        "--config.data.source=files",
        f"--config.data.files_dir={files_dir}",
        "--config.data.download=False",  # Debian's files: the originals in a gzip with another header
        "--config.data.image_size=0",  # 28x28, as the seed program sees it
        "--config.data.mean=(0.5,)",  # the seed's normalisation, for one channel
        "--config.data.std=(0.5,)",
        f"--config.train.num_epochs={args.epochs}",
        f"--config.seed={args.seed}",
    ]

    def ours(name: str, seed: int, dtype: str) -> dict[str, Any]:
        overrides = [f"--config.data.files_dir={files_dir}", f"--config.seed={seed}"]
        overrides += [f"--config.model.dtype={dtype}"] if dtype else []
        return run_train_py(f"{name} seed {seed}", args.config, overrides)

    def seed_torch() -> dict[str, Any]:
        records = run_seed_program(files_dir, args.epochs, args.seed)
        return {"records": records, "wall_seconds": records[-1]["seconds"] if records else float("nan")}

    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "seed_article_jax": lambda: run_train_py("seed_article_jax", "configs/seed_article.py", seed_article_overrides),
        "seed_torch": seed_torch,
        **{
            name: functools.partial(run_recipe_torch, name, variant, args.config, files_dir, args.seed)
            for name, variant in (("recipe_torch", "channels_last"), ("recipe_torch_bf16", "bf16_autocast"))
        },
    }
    our_dtypes = {"ours": "", "ours_float32": "float32", "ours_bf16": "bfloat16"}
    names = common.parse_list(args.runs)
    unknown = set(names) - {*our_dtypes, *runners}
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}; choose from {', '.join([*our_dtypes, *runners])}")
    env = common.environment()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name in our_dtypes:
            for seed in common.parse_list(args.our_seeds, int):
                results[f"{name} seed {seed}"] = ours(name, seed, our_dtypes[name])
        else:
            results[name] = runners[name]()

    print("\n### The seed program side by side (benchmarks/seed_reference.py)\n")
    print(common.environment_line(env))
    print(f"our recipe: {args.config}; every run goes to the end of its recipe (nothing stops on test)\n")
    for name, result in results.items():
        print(f"{name}:\n")
        rows = [[r["epoch"], f"{r['seconds']:.1f}", f"{r['test_accuracy']:.4f}"] for r in result["records"]]
        print(common.markdown_table(("epoch", "seconds", "test accuracy"), rows) + "\n")
    print(common.markdown_table(*fixed_runs.summary_table(results, TARGETS)))
    print(
        f"\n(s to X: {fixed_runs.READ_OFF}, the first evaluation at or above X, after the run had ended; "
        "it stopped nothing and is picked on test, so it describes the run, not the recipe)\n"
    )
    print("\n".join(fixed_runs.group_lines(results)))
    our_runs = fixed_runs.seed_groups(results).get("ours", [])
    if our_runs and "seed_torch" in results:
        seed = results["seed_torch"]
        ours_wall = sum(run["wall_seconds"] for run in our_runs) / len(our_runs)
        print(
            f"\nthe fixed recipes end to end: ours {ours_wall:.0f} s (mean of {len(our_runs)}), the seed program "
            f"{seed['wall_seconds']:.0f} s over its {len(seed['records'])} epochs (one seed): "
            f"{ours_wall / seed['wall_seconds']:.2f}"
        )
        ratio = fixed_runs.curve_ratio(our_runs, seed, TARGETS[0])
        print(
            f"ours (mean over seeds) / seed program, seconds to {TARGETS[0]:.2f} read off the finished runs' test "
            "curves: " + (f"{ratio:.2f} (goal: at most 0.5)" if ratio is not None else "not every curve reached it")
        )
    common.write_json(args.json, {"environment": env, "runs": results})


if __name__ == "__main__":
    main()
