"""Fine-tuning torchvision's ImageNet ResNet-50 on a folder of your own photos at 224 pixels, streamed by Grain
(`data.loader=grain`), so the folder need not fit in memory: random-resized crops and flips to train, 256 -> 224
centre crops to evaluate, ImageNet's normalisation (as the weights were trained with). SGD 0.01 with Nesterov
momentum and cosine decay over 10 epochs, the backbone at a tenth of the head's rate, label smoothing 0.1; 10% of
train held out as the validation split on which the kept best checkpoint is chosen.

  python train.py --workdir runs/mine --config configs/folder_resnet50_finetune.py \
    --config.data.files_dir=~/photos --config.finetune.source=resnet50-11ad3fa6.pth

The folder holds train/<class>/* and test/<class>/* (JPEG or PNG of any size); finetune.source is torchvision's
state_dict file (or a run `resnet-jax convert` made of it); the new head starts fresh.
"""

from resnet_jax.data import use_folder
from resnet_jax.experiment import base_config


def get_config():
    config = base_config()
    config.model.name = "resnet50_imagenet"
    config.model.dtype = "auto"
    use_folder(config.data, "")  # give --config.data.files_dir
    config.data.loader = "grain"
    config.data.image_size = 224
    config.data.channels = 3
    config.data.mean = (0.485, 0.456, 0.406)
    config.data.std = (0.229, 0.224, 0.225)
    config.data.validation_size = 0.1
    config.augment.crop_padding = 0
    config.augment.flip = False  # flipped in Grain's workers, with the crop
    config.train.batch_size = 64
    config.train.num_steps = 0
    config.train.num_epochs = 10
    config.train.label_smoothing = 0.1
    config.optimizer.learning_rate = 0.01
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    config.finetune.backbone_learning_rate_scale = 0.1
    return config
