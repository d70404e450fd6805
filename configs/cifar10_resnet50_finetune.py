"""Fine-tuning torchvision's ImageNet ResNet-50 on CIFAR-10: start it with `--init-from` a run that `resnet-jax
convert` made of torchvision's `.pth` (the new 10-class head starts fresh). ImageNet's input normalisation, as the
weights were trained with; SGD 0.01 with Nesterov momentum and cosine decay over 10 epochs, the backbone at a tenth
of the head's rate, label smoothing 0.1."""

from resnet_jax.data import use_official_files
from resnet_jax.experiment import base_config


def get_config():
    config = base_config()
    config.model.name = "resnet50_imagenet"
    use_official_files(config.data)
    config.data.mean = (0.485, 0.456, 0.406)
    config.data.std = (0.229, 0.224, 0.225)
    config.train.num_steps = 0
    config.train.num_epochs = 10
    config.train.label_smoothing = 0.1
    config.optimizer.learning_rate = 0.01
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    config.finetune.backbone_learning_rate_scale = 0.1
    return config
