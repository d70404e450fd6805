"""Fashion-MNIST to 0.94 within an hour on a 2-core CPU: ResNet-20 at the native 28x28, one-cycle SGD with Nesterov
momentum, label smoothing, pad-2 crops and flips, 14 epochs; evaluated halfway and at the end, with flip
test-time augmentation. The second CPU recipe, beside `fashion_mnist.py`."""

from resnet_jax.configuration import base_config


def get_config():
    config = base_config()
    config.model.name = "resnet20"
    config.data.dataset = "fashion_mnist"
    config.data.source = "files"
    config.data.files_dir = "/usr/share/datasets/fashion-mnist"
    config.data.image_size = 0  # the native 28x28: 23% fewer pixels than padding to 32x32
    config.augment.crop_padding = 2
    config.train.num_steps = 0
    config.train.num_epochs = 14
    config.train.label_smoothing = 0.1
    config.optimizer.learning_rate = 0.2
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "onecycle"
    config.schedule.pct_start = 0.25
    config.eval.every_epochs = 7  # with flips, an evaluation costs about a ninth of an epoch
    config.eval.tta_flip = True
    return config
