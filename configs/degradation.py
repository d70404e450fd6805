"""He et al.'s degradation experiment at full scale (2015, §4.2 and Figure 6), for a GPU: plain-20/56 against
ResNet-20/56 on the official CIFAR-10 (downloaded once), He's recipe for every network: SGD 0.1, momentum 0.9,
weight decay 1e-4, batch 128, /10 at 32k and 48k steps, 64k steps, on a 45k/5k train/validation split, with the
constant 0.01 warm-up He gave ResNet-110 (one epoch) and training error scored on a fixed 5,000-image sample of
train. Run it with `resnet-jax degradation --config configs/degradation.py`. Where there is no network, train on a
folder of images instead (e.g. CIFAR-10 (JPEG)): `--config.data.dataset=folder --config.data.source=folder
--config.data.files_dir=DIR`.
"""

from resnet_jax.data import use_official_files
from resnet_jax.experiment import base_config


def get_config():
    config = base_config()
    use_official_files(config.data)
    config.data.validation_size = 5000
    config.data.train_eval_size = 5000
    config.schedule.warmup_epochs = 1.0
    config.schedule.warmup_mode = "constant"
    config.schedule.warmup_factor = 0.1
    return config
