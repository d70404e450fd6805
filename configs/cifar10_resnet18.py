"""CIFAR-10 ResNet-18 (the seed's §3): 3x3 stem, option-B shortcuts; SGD 0.1, wd 5e-4, cosine over 200 epochs."""

from resnet_jax.configuration import base_config, use_official_files


def get_config():
    config = base_config()
    config.model.name = "resnet18"
    config.train.num_steps = 0
    config.train.num_epochs = 200
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    return use_official_files(config)
