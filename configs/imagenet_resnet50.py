"""He et al.'s ResNet-50 on ImageNet by Goyal et al.'s (2017) large-batch recipe, as flax's examples/imagenet trains
it: batch 1024 over all devices, SGD with Nesterov momentum 0.9 at 0.1 x 1024/256 = 0.4 after 5 linear warm-up
epochs, cosine decay to 0 over 90 epochs, weight decay 1e-4 off BatchNorm and biases, each block's last BatchNorm
started at zero (Goyal's zero-gamma), bfloat16. Streamed by Grain (`data.loader=grain`) from the folder given:
random-resized 224 crops and flips in Grain's workers, evaluation on 256 -> 224 centre crops.

  python train.py --workdir runs/imagenet --config configs/imagenet_resnet50.py --config.data.files_dir=/data/imagenet

The folder holds train/<class>/*.JPEG (ImageNet's 1.28 M training images) and test/<class>/*.JPEG (its 50,000
validation images, the split papers report). 10,000 training images are held out as this run's validation split:
the kept best checkpoint is chosen on them, and test is only reported. BatchNorm statistics are over the global
batch (Goyal's were over 32 images a GPU). It needs GPUs: 90 epochs are about 113,000 steps of 1024 images. This
project has run it only at toy scale (a few steps on a small folder, in its tests).
"""

from resnet_jax.data import use_folder
from resnet_jax.experiment import base_config

BATCH = 1024


def get_config():
    config = base_config()
    config.model.name = "resnet50_imagenet"
    config.model.dtype = "bfloat16"
    config.model.zero_init_residual = True
    use_folder(config.data, "")  # give --config.data.files_dir
    config.data.loader = "grain"
    config.data.workers = 8
    config.data.image_size = 224
    config.data.channels = 3
    config.data.mean = (0.485, 0.456, 0.406)  # ImageNet's, as torchvision and flax use them
    config.data.std = (0.229, 0.224, 0.225)
    config.data.validation_size = 10_000
    config.augment.crop_padding = 0  # the random-resized crop is the crop
    config.augment.flip = False  # flipped in Grain's workers, with the crop
    config.train.batch_size = BATCH
    config.train.num_steps = 0
    config.train.num_epochs = 90
    config.optimizer.learning_rate = 0.1 * BATCH / 256
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 1e-4
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 5
    config.eval.batch_size = 1000
    config.eval.every_epochs = 5
    config.checkpoint.every_epochs = 1
    return config
