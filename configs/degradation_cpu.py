"""He et al.'s degradation experiment at a 2-core CPU's scale: plain-20/56 against ResNet-20/56 on CIFAR-10 (JPEG)
(../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz), downscaled to 16x16 so that 4 networks x 3 seeds fit in about
half an hour; every network trains alike: He's SGD (0.1, momentum 0.9, weight decay 1e-4, /10 at 50% and 75%),
batch 128, 45k/5k train/validation. Run it with `resnet-jax degradation --config configs/degradation_cpu.py`.
"""

from pathlib import Path

from resnet_jax.data import use_folder
from resnet_jax.experiment import base_config

# Beside the clone (this machine's ../shared); elsewhere, give --config.data.files_dir a folder of images instead.
ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz"


def get_config():
    config = base_config()
    use_folder(config.data, ARCHIVE)
    config.data.image_size = 16
    config.data.channels = 3
    config.data.validation_size = 5000
    config.augment.crop_padding = 2
    config.train.num_steps = 0
    config.train.num_epochs = 2
    config.train.log_every_steps = 50
    config.checkpoint.keep = 1
    return config
