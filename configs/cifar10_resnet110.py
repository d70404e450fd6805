"""CIFAR-10 ResNet-110, He et al. (2015): as ResNet-20, but warmed up at lr 0.01 for the first epoch (the paper's
"about 400 iterations" of batch 128)."""

from resnet_jax.data import use_official_files
from resnet_jax.experiment import base_config


def get_config():
    config = base_config()
    config.model.name = "resnet110"
    config.schedule.warmup_epochs = 1.0
    config.schedule.warmup_mode = "constant"
    config.schedule.warmup_factor = 0.1
    use_official_files(config.data)
    return config
