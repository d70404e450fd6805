"""The seed article's own recipe: its ResNet (BasicBlock [2, 2, 2] over 16/32/64), Adam at 1e-3, 20 epochs,
batch 128, inputs normalised with mean 0.5 and std 0.5, and no augmentation."""

from resnet_jax.data import use_official_files
from resnet_jax.experiment import base_config


def get_config():
    config = base_config()
    config.model.name = "seed_resnet"
    config.data.mean = (0.5, 0.5, 0.5)
    config.data.std = (0.5, 0.5, 0.5)
    config.augment.crop_padding = 0
    config.augment.flip = False
    config.train.num_steps = 0
    config.train.num_epochs = 20
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.0
    config.schedule.name = "constant"
    use_official_files(config.data)
    return config
