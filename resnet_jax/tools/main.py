"""`resnet-jax COMMAND ...`: one entry point for every tool, as `tfds` and `huggingface-cli` have; each command is
also `python -m resnet_jax.tools.COMMAND`."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from resnet_jax import interrupts

# command -> (module, what it does)
COMMANDS = {
    "train": ("resnet_jax.tools.train", "train (or resume) a run in a workdir from a config file"),
    "evaluate": ("resnet_jax.tools.evaluate", "score a checkpoint on every example of a split"),
    "predict": ("resnet_jax.tools.predict", "predict the classes of image files"),
    "export": ("resnet_jax.tools.export", "export the inference function with jax.export"),
    "plots": ("resnet_jax.tools.plots", "plot the training curves of one or more runs"),
    "models": ("resnet_jax.tools.models", "list the model zoo, or summarise one model"),
    "compare": ("resnet_jax.tools.compare", "compare architectures: cost, speed, memory and accuracy"),
    "sweep": ("resnet_jax.tools.sweep", "a hyper-parameter grid or Optuna search of training runs"),
    "degradation": ("resnet_jax.tools.degradation", "He et al.'s degradation experiment: plain against residual nets"),
    "data": ("resnet_jax.tools.data", "describe, download or prepare a dataset"),
    "convert": ("resnet_jax.tools.convert", "convert PyTorch weights into a run, or a run's weights into PyTorch's"),
    "features": ("resnet_jax.tools.features", "write a split's embeddings (pooled or per-stage features) and labels"),
}

# Commands whose work is kept in a workdir when a signal stops them, so that the same command goes on.
RESUMABLE = ("train", "sweep", "degradation")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: resnet-jax [--version] COMMAND [--help] ...", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "resnet-jax COMMAND --help shows a command's options and their defaults."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from resnet_jax.tools import common

        print(common.version_line())
        return 0
    return interrupts.run(lambda: _run(argv[0], argv[1:]), interrupts.RESUMES if argv[0] in RESUMABLE else "")


def _run(name: str, rest: list[str]) -> int:
    # Imported here, under `interrupts.run`: a Ctrl-C during the imports (seconds of them) ends in one line too.
    from resnet_jax.tools import common

    if name not in COMMANDS:
        common.fail(f"resnet-jax: unknown command {name!r}; choose one of {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return module.main(rest) or 0
    except BrokenPipeError:
        # The reader left (`resnet-jax models | head`): no traceback, and none from Python's flush at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
