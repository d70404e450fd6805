"""He et al.'s degradation experiment at a 2-core CPU's scale (the protocol in benchmarks/RESULTS.md, fixed before
the run): plain-20/56 against ResNet-20/56 on CIFAR-10 (JPEG) (../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz)
downscaled to 16x16, 3,000 steps of He's SGD (0.1, momentum 0.9, weight decay 1e-4, batch 128, /10 at 50% and 75%)
after the constant 0.01 warm-up He gave ResNet-110 (one epoch), 45k/5k train/validation, and training error scored
on a fixed 5,000-image sample of train. `resnet-jax degradation --config configs/degradation_cpu.py --workdir W`.
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
    config.data.train_eval_size = 5000
    config.augment.crop_padding = 2
    config.train.num_steps = 3000
    config.train.log_every_steps = 50
    config.schedule.warmup_epochs = 1.0
    config.schedule.warmup_mode = "constant"
    config.schedule.warmup_factor = 0.1
    config.checkpoint.keep = 1
    return config
