"""CIFAR-10 ResNet-34 (the seed's §3): 3x3 stem, option-B shortcuts; SGD 0.1, wd 5e-4, cosine over 200 epochs."""

from resnet_jax.data import use_official_files
from resnet_jax.experiment import base_config


def get_config():
    config = base_config()
    config.model.name = "resnet34"
    config.train.num_steps = 0
    config.train.num_epochs = 200
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    use_official_files(config.data)
    return config
