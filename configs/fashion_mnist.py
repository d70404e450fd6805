"""Fashion-MNIST from the original files (Debian's dataset-fashion-mnist): ResNet-20 on 28x28 grey images padded
to 32x32, SGD 0.1 with warm-up and cosine decay, 3 epochs. Real data that needs no network."""

from resnet_jax.configuration import base_config


def get_config():
    config = base_config()
    config.data.dataset = "fashion_mnist"
    config.data.source = "files"
    config.data.files_dir = "/usr/share/datasets/fashion-mnist"
    config.train.num_steps = 0
    config.train.num_epochs = 3
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_steps = 200
    config.eval.every_epochs = 1
    return config
