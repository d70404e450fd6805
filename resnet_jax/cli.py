"""The `train.py` / `resnet-jax-train` command line: absl flags with `ml_collections.config_flags`.

Bad input ends in one line on stderr and exit status 2; a pre-empted run saves and exits 0.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import jax
from absl import app, flags
from ml_collections import config_flags

from resnet_jax import configuration, runtime
from resnet_jax.checkpoint import CheckpointError
from resnet_jax.configuration import ConfigError
from resnet_jax.data import DataError
from resnet_jax.trainer import Preempted, TrainingError, train_and_evaluate

BAD_INPUT = 2  # exit status for a config, flag or data problem; 1 is a run that had to stop
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for config.json, metrics, TensorBoard and checkpoints.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file; override keys with --config.key=value.")
flags.DEFINE_bool("fresh", False, "Archive a previous run in --workdir (to workdir/archive/) and start over.")
flags.DEFINE_bool("finetune", False, "Archive a previous run in --workdir and start from its weights.")
flags.mark_flags_as_required(["workdir", "config"])


def _exit(message: str, status: int) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    sys.exit(status)


def _stop(message: str) -> NoReturn:
    """Ends a run that had to stop, with `message` as the last line on stderr.

    The trainer has closed its writer and checkpointer by now. What is left are orbax's cancelled background writes
    (after a failed save): their coroutines and closed event loop would print tracebacks during the interpreter's
    teardown, after this line, so the process ends without one (leaving a multi-process run as the teardown would).
    """
    print(f"training stopped: {message}", file=sys.stderr, flush=True)
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    os._exit(1)


def _run(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.fresh and FLAGS.finetune:
        raise app.UsageError("--fresh and --finetune exclude each other")
    runtime.setup_logging()
    runtime.use_compile_cache()
    mode = "fresh" if FLAGS.fresh else "finetune" if FLAGS.finetune else "resume"
    try:
        results = train_and_evaluate(FLAGS.config, FLAGS.workdir, mode)
    except (ConfigError, DataError) as error:
        _exit(f"error: {error}", BAD_INPUT)
    except (TrainingError, CheckpointError) as error:
        _stop(str(error))
    except Preempted as stop:
        print(f"pre-empted: {stop}", flush=True)
        return
    print(
        f"done: step {results['step']}, test accuracy {results['test_accuracy']:.4f} "
        f"(best {results['best_test_accuracy']:.4f}), test loss {results['test_loss']:.4f}",
        flush=True,
    )


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a bad --config file, a mistyped or unknown flag or config key reported in one line
    instead of a traceback."""
    try:
        configuration.check_config_argument(argv)
        return FLAGS(argv)
    except (ConfigError, flags.Error) as error:
        _exit(f"error: {error}", BAD_INPUT)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        # config_flags raises these for --config.key=value that names no key or has the wrong type.
        key, _, hint = " ".join(str(error).replace("\\n", " ").replace("\\", "").replace("'", "").split()).partition(
            " "
        )
        overrides = " ".join(arg for arg in argv[1:] if arg.startswith("--config."))
        _exit(f"error: {overrides}: the config has no key {key!r}. {hint}".strip(), BAD_INPUT)


def main() -> None:
    app.run(_run, flags_parser=_parse_flags)
