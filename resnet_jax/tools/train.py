"""Trains a residual network in a workdir from a config file, and evaluates it as it goes.

Running the same command again resumes from the newest checkpoint. --fresh archives a previous run in the workdir
(to DIR/archive/<time>/) and starts from a new initialisation; --finetune archives it and starts from its weights.
Bad input ends in one line and exit status 2; a run that had to stop exits 1; a pre-empted run saves and exits 0.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import jax

from resnet_jax import errors, interrupts, lock, runtime, trainer
from resnet_jax.checkpoint import CheckpointError, CheckpointRefused
from resnet_jax.metrics import MetricsError, MetricsWriteError
from resnet_jax.parallel import ProcessStopped
from resnet_jax.tools import common
from resnet_jax.workdir import WorkdirError

STOPPED = 1  # exit status of a run that had to stop (non-finite values, a failed save, a full disk)


def main(argv: Sequence[str] | None = None) -> int:
    runtime.reuse_freed_memory()
    parser = common.parser("train", __doc__)
    parser.add_argument("--workdir", required=True, help="folder for config.json, metrics, TensorBoard, checkpoints")
    common.add_config_argument(parser)
    restart = parser.add_mutually_exclusive_group()
    restart.add_argument("--fresh", action="store_true", help="archive a previous run in --workdir and start over")
    restart.add_argument("--finetune", action="store_true", help="archive a previous run and start from its weights")
    parser.add_argument(
        "--init-from",
        metavar="RUN",
        help="start a new run from other weights (a run's workdir, one made by resnet-jax convert, or a PyTorch "
        "state_dict file: .pth, .pt, .th, .safetensors); the same "
        "as --config.finetune.source=RUN; not with --finetune, which starts from the weights of --workdir's run",
    )
    args, config = common.parse_with_config(parser, argv)
    if args.init_from:
        config = common.with_overrides(config, {"finetune.source": args.init_from})
    runtime.setup_logging()
    runtime.use_compile_cache()
    mode = "fresh" if args.fresh else "finetune" if args.finetune else "resume"
    try:
        results = trainer.train_and_evaluate(config, args.workdir, mode)
    except CheckpointRefused as error:  # weights this command cannot use as asked: the command is to change
        common.fail(error)
    except (trainer.TrainingError, CheckpointError, MetricsWriteError, WorkdirError, ProcessStopped) as error:
        print(f"training stopped: {error}", file=sys.stderr, flush=True)
        return STOPPED
    except (*common.INPUT_ERRORS, MetricsError) as error:  # MetricsError: a damaged metrics.jsonl to resume
        common.fail(error)
    except trainer.Preempted as stop:
        print(f"pre-empted: {stop}", flush=True)
        return 0
    if jax.process_index() == 0:
        from resnet_jax import plots  # matplotlib, imported once the run is over: not part of the start-up time

        curves = Path(args.workdir) / plots.CURVES_FILE
        try:
            # The run's lock went with the training's end: taken again, shared as the tools take it, to draw.
            with lock.sharing(args.workdir):
                plots.write_curves(args.workdir, curves)
        except (plots.PlotError, MetricsError, OSError, lock.WorkdirBusy) as error:  # the run is complete and saved
            print(f"warning: {curves} not written: {errors.one_line(error)}", file=sys.stderr, flush=True)
    best = (
        f"; best validation accuracy {results['best_validation_accuracy']:.4f}, test accuracy there "
        f"{results['test_accuracy_at_best_validation']:.4f}"
        if "best_validation_accuracy" in results
        else " (no validation split, so no best checkpoint)"
    )
    print(f"done: step {results['step']}, {trainer.describe_evaluation(results)}{best}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(interrupts.run(main, interrupts.RESUMES))
