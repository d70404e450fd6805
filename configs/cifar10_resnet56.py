"""CIFAR-10 ResNet-56 with the He et al. (2015) recipe."""

from resnet_jax.configuration import base_config, use_official_files


def get_config():
    config = base_config()
    config.model.name = "resnet56"
    return use_official_files(config)
