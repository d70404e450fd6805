"""CIFAR-10 ResNet-56 with the He et al. (2015) recipe."""

from resnet_jax.data import use_official_files
from resnet_jax.experiment import base_config


def get_config():
    config = base_config()
    config.model.name = "resnet56"
    use_official_files(config.data)
    return config
