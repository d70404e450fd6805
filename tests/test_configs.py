"""Every recipe in configs/ loads and builds, through `experiment.build`, the model the trainer trains; every
documented model option builds with every block, and its train-mode pass and gradients trace to the right shapes;
schedule boundaries keep their place when the batch changes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resnet_jax import configuration, experiment, onednn
from tests.conftest import REPO_ROOT, load_config, needs_cifar10_jpeg, needs_fashion_files
from tests.test_stream import write_folder

CONFIGS = sorted(path.stem for path in (REPO_ROOT / "configs").glob("*.py"))


# The Fashion-MNIST recipes build only where Debian's files are (scripts/setup.sh installs them), the CIFAR-10
# (JPEG) one where ../shared is.
NEEDS = {name: needs_fashion_files for name in ("fashion_mnist", "fashion_mnist_long", "fashion_mnist_depth")}
NEEDS["cifar10_jpeg"] = NEEDS["cifar10_jpeg_he"] = NEEDS["degradation_cpu"] = needs_cifar10_jpeg
# The streamed recipes read the folder given on the command line: here a small one the test writes (9 train images a
# class), with a holdout and a batch it can hold.
SMALL = {"data.validation_size": 3, "train.batch_size": 8}
FOLDER_RECIPES = {"imagenet_resnet50": SMALL, "folder_resnet50_finetune": SMALL}


def expected_dtype(name: str) -> type:
    """What a recipe's `model.dtype` computes in, as the recipes and docs say (not as the code works it out): the
    dtype named, and for "auto" bfloat16 on an accelerator, and on a CPU only where oneDNN has bfloat16 kernels."""
    if name != "auto":
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]
    if jax.default_backend() != "cpu":
        return jnp.bfloat16
    return jnp.bfloat16 if jnp.bfloat16 in onednn.library.dtypes() else jnp.float32


@pytest.mark.parametrize("name", [pytest.param(name, marks=NEEDS.get(name, ())) for name in CONFIGS])
def test_recipe_builds_the_model_the_trainer_trains(name, tmp_path):
    config = configuration.load_config_file(str(REPO_ROOT / "configs" / f"{name}.py"))
    if name in FOLDER_RECIPES:
        write_folder(tmp_path, train=9)
        config = configuration.apply_overrides(config, {"data.files_dir": str(tmp_path)} | FOLDER_RECIPES[name])
    built = experiment.build(config)
    assert built.model.dtype == built.step_config.dtype == expected_dtype(config.model.dtype)
    assert built.model.dropout_rate == config.model.dropout_rate
    if config.model.shortcut:
        assert built.model.shortcut == config.model.shortcut
    images = jnp.zeros((2, *built.input_shape))
    logits = jax.eval_shape(lambda: built.model.init_with_output(jax.random.key(0), images, train=False)[0])
    assert logits.shape == (2, built.info.num_classes)


# One model of each block and stem: basic (CIFAR option A, ImageNet-size option B), bottleneck, pre-activation basic
# (ResNet-18 and Wide-ResNet), and the seed's net with conv biases.
FAMILIES = ("resnet8_tiny", "resnet8", "resnet18", "resnet50", "preact_resnet18", "wrn16_8", "seed_resnet")
MODEL_OPTIONS = {
    "dropout": {"model.dropout_rate": 0.3},
    "zero-initialised residuals": {"model.zero_init_residual": True},
    "projection shortcuts": {"model.shortcut": "B"},
    "bfloat16": {"model.dtype": "bfloat16"},
}


# Traced, not run: compiling a train step of each of these 28 pairs would take minutes on a CPU. test_trainer.py and
# test_gradient_flow.py train real steps.
@pytest.mark.parametrize("option", sorted(MODEL_OPTIONS))
@pytest.mark.parametrize("name", FAMILIES)
def test_every_model_option_traces_train_mode_logits_and_gradients_with_every_model(name, option):
    config = load_config("smoke", **{"model.name": name, **MODEL_OPTIONS[option]})
    built = experiment.build(config)
    images = jnp.zeros((1, *built.input_shape))
    variables = jax.eval_shape(lambda: built.model.init(jax.random.key(0), images, train=False))

    def train_loss(params, batch_stats, key):
        logits, _ = built.model.apply(
            {"params": params, "batch_stats": batch_stats},
            jnp.zeros((2, *built.input_shape)),
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
        )
        return logits.astype(jnp.float32).sum(), logits

    (_, logits), grads = jax.eval_shape(
        jax.value_and_grad(train_loss, has_aux=True), variables["params"], variables["batch_stats"], jax.random.key(1)
    )
    assert logits.shape == (2, 10)
    assert jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), grads) == jax.tree.map(
        lambda leaf: (leaf.shape, leaf.dtype), variables["params"]
    )


def test_dropout_drops_in_training_and_not_in_evaluation():
    config = load_config("smoke", **{"model.name": "resnet8_tiny", "model.dropout_rate": 0.5})
    model = experiment.build(config).model
    images = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
    variables = model.init(jax.random.key(1), images, train=False)

    def train_logits(seed):
        return model.apply(
            variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(seed)}
        )[0]

    assert not np.allclose(train_logits(2), train_logits(3))  # the dropout key matters in training
    # In evaluation the same weights give what a network without dropout gives.
    without = experiment.build(load_config("smoke", **{"model.name": "resnet8_tiny", "model.dropout_rate": 0.0}))
    np.testing.assert_array_equal(
        model.apply(variables, images, train=False), without.model.apply(variables, images, train=False)
    )


def recipe_on_cifar_shaped_data(name: str, batch: int) -> experiment.Experiment:
    """A recipe built at another batch, over 50,000 synthetic examples in its dataset's shape (no files read)."""
    config = configuration.load_config_file(str(REPO_ROOT / "configs" / f"{name}.py"))
    overrides = {"data.source": "synthetic", "data.synthetic_train_examples": 50_000, "train.batch_size": batch}
    return experiment.build(configuration.apply_overrides(config, overrides))


@pytest.mark.parametrize("batch", [128, 512])
def test_he_recipe_drops_at_half_and_three_quarters_of_the_run_at_any_batch(batch):
    built = recipe_on_cifar_shaped_data("default", batch)
    assert built.total_steps == 64_000
    rates = {step: float(built.schedule(step)) for step in (31_999, 32_000, 47_999, 48_000)}
    assert rates == pytest.approx({31_999: 0.1, 32_000: 0.01, 47_999: 0.01, 48_000: 0.001})


@pytest.mark.parametrize("batch", [128, 512])
def test_wide_resnet_recipe_drops_at_its_epochs_at_any_batch(batch):
    built = recipe_on_cifar_shaped_data("cifar100_wrn28_10", batch)
    per_epoch = built.steps_per_epoch
    assert per_epoch == 50_000 // batch
    for epoch, rate in ((59, 0.1), (60, 0.02), (119, 0.02), (120, 0.004), (160, 0.0008)):
        assert float(built.schedule(epoch * per_epoch)) == pytest.approx(rate), epoch


def test_a_saved_config_loads_over_todays_defaults():
    saved = load_config("smoke").to_dict()
    del saved["schedule"]["boundary_unit"]  # written before the key existed
    saved["schedule"]["warmup_steps"] = 0  # a key that no longer exists
    config = configuration.from_saved(saved, experiment.base_config())
    assert config.schedule.boundary_unit == "fraction"
    assert "warmup_steps" not in config.schedule
    assert config.model.name == "resnet8_tiny"
    assert isinstance(config, ml_collections.ConfigDict)


def test_overrides_are_typed_and_refused_in_one_line():
    config = load_config("smoke")
    updated = configuration.apply_override_texts(
        config,
        ["optimizer.learning_rate=1", "schedule.boundaries=0.25,0.5", "eval.tta_flip=true", "model.name=resnet20"],
    )
    assert updated.optimizer.learning_rate == 1.0 and isinstance(updated.optimizer.learning_rate, float)
    assert updated.schedule.boundaries == (0.25, 0.5)
    assert updated.eval.tta_flip is True
    assert updated.model.name == "resnet20"
    assert config.model.name == "resnet8_tiny"  # a copy: the given config is untouched
    for text, named in (
        ("train.batch_size=1.5", "train.batch_size is an integer"),
        ("eval.tta_flip=yes", "give true or false"),
        ("train", "give a value"),
        ("optimizer", "give a value"),
        ("optimizer=1", "is a section of the config"),
    ):
        with pytest.raises(configuration.ConfigError, match=named):
            configuration.apply_override_texts(config, [text])
