"""Trains a residual network: `python train.py --workdir DIR --config configs/NAME.py [--config.key=value ...]`."""

from resnet_jax.cli import main

if __name__ == "__main__":
    main()
