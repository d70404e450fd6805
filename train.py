"""Trains a residual network: `python train.py --workdir DIR --config configs/NAME.py [--config.key=value ...]`
(the same command as `resnet-jax train`)."""

import sys

from resnet_jax import interrupts


def main() -> int | None:
    # Imported here, under `interrupts.run`: a Ctrl-C during the imports (seconds of them) ends in one line too.
    from resnet_jax.tools import train

    return train.main()


if __name__ == "__main__":
    sys.exit(interrupts.run(main, interrupts.RESUMES))
