"""Hyper-parameter sweeps: a grid, or an Optuna random/TPE search, of ordinary training runs, one per trial.

`resnet-jax sweep --config configs/X.py --workdir DIR --grid KEY=A,B ...` (or `--search KEY=DIST:LOW:HIGH --trials
N`), each trial trained with `--seeds N` seeds. Trials are ranked (and pruned) by validation accuracy, on a split
held out of train (10% when the config has none); test accuracy is reported, never chosen on. The Optuna study
lives in DIR/study.db, each trial in DIR/trials/<name>/, and the same command resumes: finished trials are skipped,
an interrupted one continues from its newest checkpoint. Results: DIR/results.{csv,md} and DIR/sweep.png. The
parts: `spec` (the search space), `run` (the study and its trials), `report` (the results).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import optuna

from resnet_jax import runtime, trainer
from resnet_jax.atomic import NameTooLongError
from resnet_jax.checkpoint import CheckpointError, CheckpointRefused
from resnet_jax.configuration import ConfigError
from resnet_jax.data import DataError
from resnet_jax.metrics import MetricsError, MetricsWriteError
from resnet_jax.tools import common
from resnet_jax.tools.sweep import report, run, spec
from resnet_jax.workdir import WorkdirError


def _parser() -> common.ArgumentParser:
    parser = common.parser("sweep", __doc__)
    common.add_config_argument(parser)
    parser.add_argument("--workdir", required=True, help="the sweep's folder: study.db, trials/<name>/, results.*")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a grid dimension (repeat for more; every combination runs once)",
    )
    parser.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="KEY=DIST:ARGS",
        help="a search dimension: uniform:LOW:HIGH, loguniform:LOW:HIGH or choice:A,B,C (repeat for more)",
    )
    parser.add_argument("--trials", type=int, default=0, help="number of trials of a --search")
    parser.add_argument("--sampler", choices=spec.SAMPLERS, default="tpe", help="Optuna's sampler of a --search")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="training seeds per trial (seed, seed+1, ...); the objective is their mean validation accuracy",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="stop trials below the median of earlier ones (Optuna), by their first seed's validation accuracy",
    )
    parser.add_argument(
        "--prune-after-epochs",
        "--prune_after_epochs",
        type=int,
        default=2,
        metavar="N",
        help="the first epoch at which a trial may be pruned",
    )
    parser.add_argument("--top", type=int, default=5, help="how many of the best trials' curves sweep.png overlays")
    return parser


def run_as_a_tool(
    config: ml_collections.ConfigDict, workdir: str, sweep: spec.SweepSpec, top: int, name: str
) -> list[report.TrialResult] | int:
    """`run.run_sweep` as a command runs it: bad input ends in one line; a checkpoint error, a pre-emption or an
    interrupt give the exit status to end with (the same command resumes)."""
    runtime.setup_logging()
    # Optuna's own `[I ...]` line per trial repeats what the sweep reports itself (its trials' progress and results).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runtime.use_compile_cache()
    try:
        return run.run_sweep(config, workdir, sweep, top)
    except (ConfigError, DataError, NameTooLongError, MetricsError) as error:  # MetricsError: a damaged metrics.jsonl
        common.fail(error)
    except CheckpointRefused as error:  # a trial's checkpoint of another state's layout
        common.fail(
            f"{error}. In a {name}, --fresh is moving that trial's folder away: the same command then runs it anew"
        )
    # A full disk: the trial is left unfinished, and the same command resumes it first.
    except (CheckpointError, MetricsWriteError, WorkdirError) as error:
        print(f"{name} stopped: {error}", file=sys.stderr)
        return 1
    except trainer.Preempted as stop:
        print(f"pre-empted: {stop}", flush=True)
        return 0
    except KeyboardInterrupt:
        print("interrupted; run the same command to resume", flush=True)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    runtime.reuse_freed_memory()
    args, config = common.parse_with_config(_parser(), argv)
    try:
        config = run.with_validation(config)
        sweep = spec.make_spec(
            config, args.grid, args.search, args.trials, args.sampler, args.prune, args.prune_after_epochs, args.seeds
        )
    except (ConfigError, DataError) as error:
        common.fail(error)
    results = run_as_a_tool(config, args.workdir, sweep, args.top, "sweep")
    if isinstance(results, int):
        return results
    done = sum(result.state != "failed" for result in results)
    print(
        f"done: {done} of {common.plural(len(results), 'trial')} finished; "
        f"results in {Path(args.workdir) / report.RESULTS_MD}",
        flush=True,
    )
    return 0
