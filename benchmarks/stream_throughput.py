"""The grain loader (`data.loader=grain`) at 224 px on a folder of ImageNet-sized JPEGs: first the pipeline alone
(decode, random-resized crop and flip into uint8 batches), in images/s for 1, 2 and 4 worker processes; then beside
the train step, the same short run with the folder resident on the devices (`data.loader=device`) and streamed: the
ratio of their step rates says whether the step waits for data.

    python -m benchmarks.stream_throughput --folder /tmp/stream-bench --images 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import common

IMAGE_SIZE = 224
CLASSES = 10
# ImageNet's training JPEGs are about 400x350 on average (most between 250 and 500 pixels a side), ~110 KB each.
SIDES = (250, 500)
QUALITY = 90


def make_folder(folder: Path, images: int, seed: int = 0) -> Path:
    """`images` JPEGs of random ImageNet-like sizes in CLASSES class folders under folder/train, and a tenth as many
    under folder/test (kept for reuse): smooth random colour fields with grain, which compress about as photographs
    do."""
    marker = folder / f"made-{images}.json"
    if marker.exists():
        return folder
    rng = np.random.default_rng(seed)
    for index in range(images + images // 10):
        width, height = (int(side) for side in rng.integers(*SIDES, size=2))
        field = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
        pixels = np.asarray(field, np.float32) + rng.normal(0, 16, (height, width, 3))
        split = "train" if index < images else "test"
        path = folder / split / f"class{index % CLASSES}" / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=QUALITY)
    sizes = [path.stat().st_size for path in (folder / "train").rglob("*.jpg")]
    marker.write_text(json.dumps({"images": images, "mean_bytes": float(np.mean(sizes))}))
    return folder


def pipeline_rate(folder: Path, workers: int, batch: int, batches: int, repeats: int) -> list[float]:
    """Images/s of the train stream alone, `repeats` windows of `batches` batches after a warm-up of two (which
    starts the workers)."""
    from resnet_jax.data import listing, stream

    files = listing.open_listing(str(folder))
    rows = np.arange(len(files.names["train"]))
    train = stream.train_stream(
        files, "train", rows, batch, len(rows) // batch, IMAGE_SIZE, 3, seed=0, workers=workers, buffer=2
    )
    try:
        train.take(2)
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(batches):
                train.take(1)
            rates.append(batches * batch / (time.perf_counter() - start))
        return rates
    finally:
        train.close()


def step_rate(folder: Path, workdir: Path, loader: str, args: argparse.Namespace) -> list[float]:
    """The train step's images/s in each logged window but the first (compilation, workers starting) of a short run
    on the folder at 224 px with `loader`, as train.py runs it."""
    command = [
        sys.executable, "train.py", "--workdir", str(workdir), "--fresh", "--config", "configs/default.py",
        "--config.data.dataset=folder", "--config.data.source=folder", f"--config.data.files_dir={folder}",
        f"--config.data.image_size={IMAGE_SIZE}", f"--config.data.loader={loader}",
        f"--config.data.workers={args.step_workers}", f"--config.model.name={args.model}",
        f"--config.train.batch_size={args.step_batch}", f"--config.train.num_steps={args.steps}",
        "--config.train.num_epochs=0", f"--config.train.log_every_steps={args.log_every}",
        "--config.schedule.name=constant", "--config.model.dtype=float32",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [record["images_per_second"] for record in records if "images_per_second" in record][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="where the JPEG folder is made (and kept)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", default="1,2,4", help="worker processes to time the pipeline with")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10, help="batches in each timed window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="resnet18_imagenet", help="the network beside which the loaders run")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--step-batch", type=int, default=32)
    parser.add_argument("--step-workers", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--skip-step", action="store_true", help="time the pipeline alone")
    args = parser.parse_args()
    folder = make_folder(args.folder, args.images)
    print(common.environment_line(common.environment()), flush=True)
    print(f"pipeline alone, {IMAGE_SIZE} px, batches of {args.batch}, {args.images} JPEGs of {SIDES} px sides:")
    for workers in (int(part) for part in args.workers.split(",")):
        rates = pipeline_rate(folder, workers, args.batch, args.batches, args.repeats)
        windows = ", ".join(f"{rate:.0f}" for rate in rates)
        print(f"  {workers} worker(s): median {statistics.median(rates):.0f} images/s ({windows})", flush=True)
    if args.skip_step:
        return
    print(f"beside the train step ({args.model}, batch {args.step_batch}, {args.steps} steps, float32):")
    rates = {}
    for loader in ("device", "grain"):
        rates[loader] = step_rate(folder, args.folder / f"run-{loader}", loader, args)
        median = statistics.median(rates[loader])
        print(f"  data.loader={loader}: median {median:.1f} images/s over {len(rates[loader])} windows", flush=True)
    ratio = statistics.median(rates["grain"]) / statistics.median(rates["device"])
    print(f"  grain / device: {ratio:.2f} (1.00: the step never waits for the stream)")


if __name__ == "__main__":
    main()
