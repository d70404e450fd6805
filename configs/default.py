"""CIFAR-10 ResNet-20, He et al. (2015): SGD momentum 0.9, wd 1e-4, batch 128, lr 0.1 /10 at 32k and 48k, 64k steps."""

from resnet_jax.data import use_official_files
from resnet_jax.experiment import base_config


def get_config():
    config = base_config()
    use_official_files(config.data)
    return config
