"""The seed's §3 at a 2-core CPU's scale: He et al.'s ResNet-18 against ResNet-34 (their §4.1 ImageNet pair: 7x7
stride-2 stem and max-pool, basic blocks [2, 2, 2, 2] against [3, 4, 6, 3]) on Fashion-MNIST at 28x28, trained
alike: the README's first-run recipe (one-cycle Nesterov SGD at 0.2, label smoothing 0.1) in bfloat16, 2 epochs,
55k/5k train/validation. Run both, with seeds, as one sweep:

    resnet-jax sweep --config configs/fashion_mnist_depth.py --workdir W \
      --grid model.name=resnet18_imagenet,resnet34_imagenet --seeds 3

The ImageNet stem brings 28x28 down to 7x7 before the first stage: a forward pass costs 0.036 GFLOPs (ResNet-18)
and 0.073 (ResNet-34, about what ResNet-20 costs at 32x32); the zoo's CIFAR-stem `resnet18` keeps 28x28 through its
first stage and costs 0.77, 21 times as much.
"""

from pathlib import Path

from resnet_jax.configuration import load_config_file

FIRST_RUN = Path(__file__).with_name("fashion_mnist.py")


def get_config():
    config = load_config_file(str(FIRST_RUN))
    config.model.name = "resnet18_imagenet"
    config.model.dtype = "bfloat16"
    config.data.validation_size = 5000
    config.train.num_epochs = 2
    return config
