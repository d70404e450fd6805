"""CIFAR-100 Wide-ResNet-28-10 (Zagoruyko & Komodakis 2016): SGD Nesterov 0.1, wd 5e-4, batch 128, 200 epochs,
lr x0.2 at epochs 60, 120 and 160, dropout 0.3."""

from resnet_jax.data import use_official_files
from resnet_jax.experiment import base_config


def get_config():
    config = base_config()
    config.model.name = "wrn28_10"
    config.model.dropout_rate = 0.3
    config.data.dataset = "cifar100"
    config.train.num_steps = 0
    config.train.num_epochs = 200
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.schedule.boundaries = (60, 120, 160)
    config.schedule.boundary_unit = "epochs"
    config.schedule.decay_factor = 0.2
    use_official_files(config.data)
    return config
