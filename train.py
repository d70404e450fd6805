"""Trains a residual network: `python train.py --workdir DIR --config configs/NAME.py [--config.key=value ...]`
(the same command as `resnet-jax train`)."""

import sys

from resnet_jax.tools.train import main

if __name__ == "__main__":
    sys.exit(main())
