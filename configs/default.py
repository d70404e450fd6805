"""CIFAR-10 ResNet-20, He et al. (2015): SGD momentum 0.9, wd 1e-4, batch 128, lr 0.1 /10 at 32k and 48k, 64k steps."""

from resnet_jax.configuration import base_config, use_official_files


def get_config():
    return use_official_files(base_config())
