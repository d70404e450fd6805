"""The degradation protocol's stage 2 (benchmarks/RESULTS.md), run so that it survives a machine that is replaced
between sessions: each of its 12 runs is trained in the folder `resnet-jax degradation` would give it, and once it
ends, its record (config.json, metrics.jsonl; no weights) is copied into RECORDS, which is committed. A run whose
record is there is done; the table and figure are drawn from RECORDS by the degradation command's own functions.

  PYTHONPATH=CHECKOUT python benchmarks/degradation_stage2.py --workdir W --records R   (train what is missing)
  PYTHONPATH=CHECKOUT python benchmarks/degradation_stage2.py --workdir W --records R --report

CHECKOUT is the code the protocol fixed (`75da2b2`, set up by its scripts/setup.sh), so that every run of the stage
is the same program; the order puts first the runs whose first records were lost with a machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import resnet_jax
from resnet_jax import configuration, metrics, runtime, trainer
from resnet_jax.tools import degradation
from resnet_jax.tools.sweep import run

# The checkout's own config: the protocol fixed it with the code.
CONFIG = Path(resnet_jax.__file__).resolve().parents[1] / "configs/degradation_cpu.py"
STEPS = 12_000
SEEDS = 3
DEPTHS = (20, 56)
RECORD_FILES = ("config.json", metrics.METRICS_FILE)
# (network, seed): first the six runs no machine has finished, then the six whose folders were lost with one; within
# each six the 20-layer runs (about 15 minutes alone on a 2-core Zen 4) go before the 56-layer ones (about 45), so
# that a session ends fewer runs part-way. The order changes no run.
ORDER = (
    ("plain20", 1),
    ("plain56", 1),
    ("resnet20", 2),
    ("plain20", 2),
    ("resnet56", 2),
    ("plain56", 2),
    ("resnet20", 0),
    ("plain20", 0),
    ("resnet20", 1),
    ("resnet56", 0),
    ("plain56", 0),
    ("resnet56", 1),
)


def stage_config():
    config = configuration.load_config_file(str(CONFIG))
    config = configuration.apply_overrides(config, {"train.num_steps": STEPS})
    return run.with_validation(config)


def run_folder(root: Path, name: str, seed: int) -> Path:
    """The folder `resnet-jax degradation --seeds 3` gives this run under `root`."""
    trial_dir = root / run.TRIALS_DIR / run.trial_name({"model.name": name})
    return dict(run.seed_runs(trial_dir, SEEDS, 0))[seed]


def finished(folder: Path) -> bool:
    """Whether `folder` holds the record of a run evaluated on test at its last step."""
    if not (folder / metrics.METRICS_FILE).exists():
        return False
    return any(r.get("step") == STEPS and r.get("test_accuracy") is not None for r in metrics.read_metrics(folder))


def keep_record(run_dir: Path, record_dir: Path) -> None:
    """Copies the run's record into `record_dir`, each file whole or not at all."""
    record_dir.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        partial = record_dir / f".{name}.part"
        shutil.copyfile(run_dir / name, partial)
        partial.replace(record_dir / name)


def train_missing(config, workdir: Path, records: Path) -> None:
    for name, seed in ORDER:
        record_dir = run_folder(records, name, seed)
        if finished(record_dir):
            continue
        run_dir = run_folder(workdir, name, seed)
        start = time.time()
        print(f"{time.strftime('%H:%M:%S')} {name} seed {seed}: training in {run_dir}", flush=True)
        overrides = {"model.name": name, "seed": seed}
        trainer.train_and_evaluate(configuration.apply_overrides(config, overrides), run_dir)
        keep_record(run_dir, record_dir)
        print(f"{time.strftime('%H:%M:%S')} {name} seed {seed}: done in {time.time() - start:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="where the runs train (checkpoints, not kept)")
    parser.add_argument("--records", type=Path, required=True, help="where finished runs' records are kept")
    parser.add_argument("--report", action="store_true", help="draw the table and figure from RECORDS, train nothing")
    args = parser.parse_args()
    runtime.reuse_freed_memory()
    runtime.setup_logging()
    runtime.use_compile_cache()
    config = stage_config()
    if not args.report:
        try:
            train_missing(config, args.workdir, args.records)
        except trainer.Preempted as stop:  # its checkpoint is saved: the same command resumes it
            print(f"pre-empted: {stop}", flush=True)
            return 0
    missing = [f"{name} seed {seed}" for name, seed in ORDER if not finished(run_folder(args.records, name, seed))]
    if missing:
        print(f"not drawn: {len(missing)} of {len(ORDER)} runs have no record yet ({', '.join(missing)})")
        return 0
    nets = degradation.networks(config, args.records, DEPTHS, SEEDS)
    title = f"plain against residual networks: cifar10-jpeg at 16x16, {STEPS:,} steps, {SEEDS} seeds"
    degradation.plot(args.records / degradation.PLOT_FILE, nets, title)
    text = degradation.table(nets, SEEDS)
    (args.records / degradation.TABLE_FILE).write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
