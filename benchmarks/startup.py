"""Seconds from `python train.py ...` to the trainer's line that its loop starts (the first train step follows at
once), cold (an empty XLA compilation cache) and warm (the cache the cold run filled), over several rounds.

    python -m benchmarks.startup --config configs/fashion_mnist.py --rounds 5 [-- --config.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import common

READY = "start-up took"  # the trainer's last line before its loop
ROOT = Path(__file__).resolve().parents[1]


def seconds_to_ready(
    config: str, overrides: Sequence[str], cache_dir: Path, workdir: Path, timeout: float = 600
) -> tuple[float, str]:
    """Starts the trainer, and stops it once it logs that its loop is starting: (seconds, that line)."""
    command = [sys.executable, str(ROOT / "train.py"), "--workdir", str(workdir), "--config", config, *overrides]
    # The cache the trainer sets up for itself (runtime.use_compile_cache), in a folder of our own.
    cache = {"JAX_COMPILATION_CACHE_DIR": str(cache_dir), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
    env = os.environ | cache | {"PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    output = []
    try:
        for line in process.stderr:
            output.append(line)
            if READY in line:
                return time.perf_counter() - start, line[line.index(READY) :].strip()
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
    raise RuntimeError(
        f"the trainer ended (or ran past {timeout:.0f} s) before its loop started:\n{''.join(output[-20:])}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/fashion_mnist.py")
    parser.add_argument("overrides", nargs="*", help="trainer flags after --, e.g. -- --config.model.name=resnet56")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    env = common.environment()
    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="startup_") as folder:
            cache = Path(folder) / "cache"
            cold, cold_line = seconds_to_ready(args.config, args.overrides, cache, Path(folder) / "cold")
            warm, warm_line = seconds_to_ready(args.config, args.overrides, cache, Path(folder) / "warm")
        rounds.append({"cold_seconds": cold, "warm_seconds": warm, "cold_line": cold_line, "warm_line": warm_line})
        print(f"cold {cold:.2f} s, warm {warm:.2f} s", flush=True)
    cold_median = statistics.median(r["cold_seconds"] for r in rounds)
    warm_median = statistics.median(r["warm_seconds"] for r in rounds)
    print(f"\n### Start-up: `train.py --config {args.config} {' '.join(args.overrides)}` (benchmarks/startup.py)\n")
    print(common.environment_line(env) + "\n")
    rows = [["cold (empty compilation cache)", *(r["cold_seconds"] for r in rounds), cold_median]]
    rows.append(["warm (the cache the cold run filled)", *(r["warm_seconds"] for r in rounds), warm_median])
    headers = ("start", *(f"round {index + 1} s" for index in range(len(rounds))), "median s")
    print(common.markdown_table(headers, rows))
    print(f"\nThe trainer's own line, last round: cold `{rounds[-1]['cold_line']}`; warm `{rounds[-1]['warm_line']}`")
    common.write_json(args.json, {"environment": env, "config": args.config, "rounds": rounds})


if __name__ == "__main__":
    main()
