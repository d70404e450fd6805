"""Starting from another run's weights: what fits is taken and a new head starts fresh, a frozen backbone does not
move (nor do its statistics in a linear probe), and the backbone's learning rate is the head's times its scale."""

import shutil

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resnet_jax import checkpoint, configuration, experiment, finetune, trainer
from resnet_jax.interop import runs
from resnet_jax.tools import train as train_tool
from tests.conftest import load_config, optimizer


def final_tree(workdir):
    checkpointer = checkpoint.Checkpointer(workdir / "checkpoints", create=False)
    tree, _ = checkpointer.restore(checkpointer.latest_step(), None)
    return jax.device_get(tree)


def without_head(tree):
    return {name: part for name, part in tree.items() if name != "head"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained smoke run, the weights every test here starts from."""
    workdir = tmp_path_factory.mktemp("source")
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)
    return workdir


@pytest.mark.parametrize("freeze", ["backbone", "all_but_head"])
def test_a_frozen_backbone_changes_only_the_head(source, tmp_path, freeze):
    config = load_config("smoke", **{"train.num_epochs": 1, "finetune.source": str(source), "finetune.freeze": freeze})
    trainer.train_and_evaluate(config, tmp_path / "run")
    before, after = final_tree(source), final_tree(tmp_path / "run")
    chex.assert_trees_all_equal(without_head(after["params"]), without_head(before["params"]))
    assert not np.allclose(after["params"]["head"]["kernel"], before["params"]["head"]["kernel"])
    pairs = zip(jax.tree.leaves(after["batch_stats"]), jax.tree.leaves(before["batch_stats"]), strict=True)
    statistics_kept = all(np.array_equal(new, old) for new, old in pairs)
    assert statistics_kept is (freeze == "all_but_head")  # a linear probe keeps them; a frozen backbone's follow


def test_a_head_for_another_class_count_starts_fresh_and_the_rest_is_taken(source, tmp_path, capsys):
    # CIFAR-100-shaped random data: 100 classes, so the head's kernel is (16, 100), the source's (16, 10).
    overrides = ["--config.data.dataset=cifar100", "--config.data.source=synthetic", "--config.train.num_epochs=1"]
    code = train_tool.main(
        [
            "--workdir",
            str(tmp_path / "run"),
            "--config",
            "configs/smoke.py",
            *overrides,
            "--init-from",
            str(source),
            "--config.finetune.freeze=all_but_head",
        ]
    )
    assert code == 0
    before, after = final_tree(source), final_tree(tmp_path / "run")
    assert after["params"]["head"]["kernel"].shape == (16, 100)
    chex.assert_trees_all_equal(without_head(after["params"]), without_head(before["params"]))
    assert "['params']['head']['kernel'] (16, 100) (saved: (16, 10)) starts fresh" in capsys.readouterr().err


def test_the_backbone_moves_at_its_scale_of_the_heads_rate():
    params = {"head": {"kernel": jnp.ones((2, 2))}, "stage1_block1": {"kernel": jnp.ones((3,))}}
    grads = jax.tree.map(lambda leaf: jnp.full_like(leaf, 0.5), params)
    section = ml_collections.ConfigDict(finetune.DEFAULTS | {"backbone_learning_rate_scale": 0.25})
    plain = optimizer(0.1, weight_decay=0.0, momentum=0.0)
    scaled = finetune.wrap_optimizer(plain, section)
    full, _ = plain.update(grads, plain.init(params), params, step=jnp.int32(0))
    updates, _ = scaled.update(grads, scaled.init(params), params, step=jnp.int32(0))
    chex.assert_trees_all_close(updates["head"], full["head"])
    chex.assert_trees_all_close(updates["stage1_block1"], jax.tree.map(lambda u: 0.25 * u, full["stage1_block1"]))


def test_a_foreign_weight_file_or_a_missing_source_is_refused_in_one_line(tmp_path):
    weights = tmp_path / "resnet20.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(checkpoint.CheckpointError, match="resnet20.safetensors"):
        finetune.read_weights(str(weights), None)
    with pytest.raises(configuration.ConfigError, match="does not exist"):
        finetune.check_source(str(tmp_path / "none"))
    with pytest.raises(configuration.ConfigError, match="must be 0 or more"):
        finetune.check_config(ml_collections.ConfigDict(finetune.DEFAULTS | {"backbone_learning_rate_scale": -1.0}))
    plain = optimizer(0.1)
    assert finetune.wrap_optimizer(plain, ml_collections.ConfigDict(finetune.DEFAULTS)) is plain


def test_a_run_resumes_once_the_weights_it_started_from_are_gone(source, tmp_path):
    moved = tmp_path / "source"
    shutil.copytree(source, moved)
    started = load_config("smoke", **{"train.num_epochs": 1, "finetune.source": str(moved)})
    trainer.train_and_evaluate(started, tmp_path / "run")
    shutil.rmtree(moved)  # scratch space cleared, say: the run holds its weights in its own checkpoints now
    longer = configuration.apply_overrides(started, {"train.num_epochs": 2})
    assert trainer.train_and_evaluate(longer, tmp_path / "run")["step"] == 16
    # A new run from it, though, needs it: refused in one line, and no workdir is left behind.
    with pytest.raises(configuration.ConfigError, match="does not exist"):
        trainer.train_and_evaluate(started, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_pytorch_weight_file_starts_a_deeper_run_where_it_fits(tmp_path):
    # resnet8's weights written out in akamaster's layout, then a resnet20 run started from the file.
    small = tmp_path / "resnet8"
    trainer.train_and_evaluate(load_config("smoke", **{"model.name": "resnet8", "train.num_epochs": 1}), small)
    weights, _, _ = runs.write_run_weights(small, tmp_path / "resnet8.safetensors")
    config = load_config("smoke", **{"model.name": "resnet20", "train.num_epochs": 1})
    state = experiment.build(config).new_state()
    state = finetune.start_weights(state, finetune.read_weights(str(weights), state), str(weights))
    source = final_tree(small)
    chex.assert_trees_all_equal(jax.device_get(state.params["stage2_block1"]), source["params"]["stage2_block1"])
    chex.assert_trees_all_equal(jax.device_get(state.batch_stats["stem_bn"]), source["batch_stats"]["stem_bn"])


def test_weights_are_fitted_to_the_models_shapes_before_any_state_exists():
    # What start-up checks before the run loads its data and says what it runs: the model's shapes and dtypes alone.
    model = jax.eval_shape(lambda: {"params": {"head": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)}}})
    ten_classes = {"params": {"head": {"kernel": np.ones((4, 10)), "bias": np.ones(10)}}}
    with pytest.raises(checkpoint.CheckpointRefused, match="w.npz: no parameter fits this model"):
        checkpoint.fitting_weights(model, ten_classes, "w.npz")
    complex_kernel = {"params": {"head": {"kernel": np.ones((4, 2), np.complex64)}}}
    with pytest.raises(checkpoint.CheckpointRefused, match="holds complex64, which cannot become float32"):
        checkpoint.fitting_weights(model, complex_kernel, "w.npz")
    fits, fresh = checkpoint.fitting_weights(model, {"params": {"head": {"kernel": np.ones((4, 2))}}}, "w.npz")
    assert list(fits) == ["['params']['head']['kernel']"]
    assert fresh == ["['params']['head']['bias'] (2,) (saved: none)"]
