"""The README's first-run recipe written in PyTorch, as a PyTorch user who copies it would run it: the network,
initial weights, augmentation, optimizer, schedule, loss and evaluation that `configs/fashion_mnist.py` describes,
read from that config, in eager PyTorch (float32 channels_last, or bfloat16 autocast). One JSON line per epoch.

    python -m benchmarks.recipe_torch --variant bf16_autocast     # benchmarks.seed_reference runs it beside ours

PyTorch is the optional extra `bench`; nothing else imports this file.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks.time_to_accuracy import fashion_mnist_dir
from benchmarks.torch_reference import VARIANTS, build_torch_resnet, copy_flax_variables, import_torch, sgd
from resnet_jax import configuration, data, models

EVAL_BATCH = 1000


def check_recipe(config: ml_collections.ConfigDict) -> None:
    """Refuses, in one line, a config that asks for more than this PyTorch program writes out. `model.dtype` is not
    read: the compute dtype is the `--variant`'s (float32 channels_last, or bfloat16 autocast)."""
    unsupported = {
        "data.dataset": (config.data.dataset, "fashion_mnist"),
        "schedule.name": (config.schedule.name, "onecycle"),
        "optimizer.name": (config.optimizer.name, "sgd"),
        "train.num_steps": (config.train.num_steps, 0),
        "train.ema_decay": (config.train.ema_decay, 0.0),
        "data.validation_size": (config.data.validation_size, 0.0),
        "augment.cutout_size": (config.augment.cutout_size, 0),
        "augment.mixup_alpha": (config.augment.mixup_alpha, 0.0),
        "augment.cutmix_alpha": (config.augment.cutmix_alpha, 0.0),
        "eval.tta_flip": (config.eval.tta_flip, False),
        "model.shortcut": (config.model.shortcut, ""),
        "model.dropout_rate": (config.model.dropout_rate, 0.0),
        "model.zero_init_residual": (config.model.zero_init_residual, False),
    }
    for key, (value, written) in unsupported.items():
        if value != written:
            raise SystemExit(f"recipe_torch writes out {key}={written!r} only, and the config gives {value!r}")


def run(config: ml_collections.ConfigDict, variant_name: str, files_dir: str, seed: int) -> None:
    torch = import_torch()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(seed)
    check_recipe(config)
    variant = VARIANTS[variant_name]
    train = data.load_split("fashion_mnist", "train", source="files", files_dir=files_dir, image_size=0)
    test = data.load_split("fashion_mnist", "test", source="files", files_dir=files_dir, image_size=0)
    image_shape = train.images.shape[1:]
    info = data.get_dataset_info("fashion_mnist")
    shift = torch.tensor(info.mean) * 255.0
    scale = torch.tensor(info.std) * 255.0
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format

    spec = models.get_model(config.model.name)
    net = build_torch_resnet(spec, in_channels=image_shape[-1])
    # The recipe's own initial weights (He-normal convolutions), drawn by Flax from the same seed.
    copy_flax_variables(net, spec.init(jax.random.key(seed), jnp.zeros((1, *image_shape)), train=False))
    net = net.to(memory_format=memory_format)
    optimizer_config = config.optimizer
    optimizer = sgd(
        torch,
        net,
        optimizer_config.learning_rate,
        optimizer_config.weight_decay,
        optimizer_config.momentum,
        optimizer_config.nesterov,
    )
    batch, epochs = config.train.batch_size, config.train.num_epochs
    steps_per_epoch = len(train) // batch  # the trainer drops the last partial batch too
    # optax.cosine_onecycle_schedule's defaults (div 25, final div 1e4, cosine both ways) are OneCycleLR's; the
    # recipe keeps SGD's momentum fixed, which OneCycleLR would otherwise cycle.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=optimizer_config.learning_rate,
        total_steps=steps_per_epoch * epochs,
        pct_start=config.schedule.pct_start,
        cycle_momentum=False,
    )
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing)
    # Copies: the loaded splits are read-only arrays, which torch.from_numpy warns about.
    images, labels = torch.tensor(train.images), torch.tensor(train.labels).long()
    test_images, test_labels = torch.tensor(test.images), torch.tensor(test.labels).long()
    padding = config.augment.crop_padding
    height, width = image_shape[:2]

    def normalized(uint8_nhwc):
        inputs = ((uint8_nhwc.float() - shift) / scale).permute(0, 3, 1, 2)
        return inputs.contiguous(memory_format=memory_format)

    def augmented(uint8_nhwc):
        # Pad-and-crop and flip as `augment.random_crop` and `random_flip`: zeros around the uint8 image, one gather.
        count = uint8_nhwc.shape[0]
        padded = torch.nn.functional.pad(uint8_nhwc, (0, 0, padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (count, 2))
        flip = torch.rand(count) < 0.5 if config.augment.flip else torch.zeros(count, dtype=torch.bool)
        rows = offsets[:, :1] + torch.arange(height)
        cols = torch.arange(width)
        cols = offsets[:, 1:] + torch.where(flip[:, None], width - 1 - cols, cols)
        return normalized(padded[torch.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]])

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bf16)

    for epoch in range(1, epochs + 1):
        net.train()
        permutation = torch.randperm(len(train))
        loss_sum = torch.zeros(())
        for step in range(steps_per_epoch):
            indices = permutation[step * batch : (step + 1) * batch]
            with autocast():
                logits = net(augmented(images[indices]))
            loss = criterion(logits.float(), labels[indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach()
        net.eval()
        correct = 0
        with torch.no_grad(), autocast():
            for start in range(0, len(test), EVAL_BATCH):
                logits = net(normalized(test_images[start : start + EVAL_BATCH]))
                correct += (logits.argmax(-1) == test_labels[start : start + EVAL_BATCH]).sum().item()
        record = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / steps_per_epoch,
            "test_accuracy": correct / len(test),
        }
        print(json.dumps(record), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipe_torch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/fashion_mnist.py", help="the recipe to write out")
    parser.add_argument("--variant", default="channels_last", choices=("eager", "channels_last", "bf16_autocast"))
    parser.add_argument("--files-dir", default="", help="Fashion-MNIST files; default .data/fashion-mnist or Debian's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(configuration.load_config_file(args.config), args.variant, fashion_mnist_dir(args.files_dir), args.seed)


if __name__ == "__main__":
    main()
