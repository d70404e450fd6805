"""A tiny network on synthetic data: a whole run with eval and checkpoints in seconds on a CPU."""

from resnet_jax.experiment import base_config


def get_config():
    config = base_config()
    config.model.name = "resnet8_tiny"
    config.data.dataset = "synthetic"
    config.data.source = "synthetic"
    config.data.synthetic_train_examples = 512
    config.data.synthetic_test_examples = 200
    config.train.batch_size = 64
    config.train.num_steps = 0
    config.train.num_epochs = 4
    config.train.log_every_steps = 4
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    config.eval.batch_size = 64
    config.checkpoint.keep = 2
    return config
