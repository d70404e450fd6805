"""CIFAR-10 (JPEG) with He et al.'s (2015) recipe, for a GPU: ResNet-20, SGD momentum 0.9, weight decay 1e-4,
batch 128, learning rate 0.1 divided by 10 at 32k and 48k steps, 64k steps. The images are read by the folder
source from ../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz, or from .data/cifar10-jpeg/ where
benchmarks/prepare_gpu_carry.sh puts a copy for a lent GPU machine. Not the official CIFAR-10.
"""

from pathlib import Path

from resnet_jax.data import use_folder
from resnet_jax.experiment import base_config

REPOSITORY = Path(__file__).resolve().parents[1]
ARCHIVE_NAME = "cifar10-jpeg.tar.gz"
# Beside the clone (this machine's ../shared), else the copy carried to a GPU machine.
CANDIDATES = (
    REPOSITORY.parent / "shared/data/cifar10-jpeg" / ARCHIVE_NAME,
    REPOSITORY / ".data/cifar10-jpeg" / ARCHIVE_NAME,
)


def get_config():
    config = base_config()
    archive = next((path for path in CANDIDATES if path.exists()), CANDIDATES[0])
    use_folder(config.data, archive)
    config.data.image_size = 32
    config.data.channels = 3
    return config
