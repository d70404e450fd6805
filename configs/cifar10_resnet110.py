"""CIFAR-10 ResNet-110, He et al. (2015): as ResNet-20, but warmed up at lr 0.01 for the first 400 steps."""

from resnet_jax.configuration import base_config, use_official_files


def get_config():
    config = base_config()
    config.model.name = "resnet110"
    config.schedule.warmup_steps = 400
    config.schedule.warmup_mode = "constant"
    config.schedule.warmup_factor = 0.1
    return use_official_files(config)
