"""Every recipe in configs/ loads, passes the trainer's validation and builds its model for its data's shape."""

import runpy

import jax
import pytest

from resnet_jax import configuration, data, models
from tests.conftest import REPO_ROOT, needs_fashion_files

CONFIGS = sorted(path.stem for path in (REPO_ROOT / "configs").glob("*.py"))


# The Fashion-MNIST recipes validate only where Debian's files are (scripts/setup.sh installs them).
@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=needs_fashion_files) if "fashion" in name else name for name in CONFIGS]
)
def test_recipe_validates_and_builds_its_model(name):
    config = runpy.run_path(str(REPO_ROOT / "configs" / f"{name}.py"))["get_config"]()
    configuration.validate(config)
    info = data.get_dataset_info(config.data.dataset)
    shape = data.input_shape(info, config.data.image_size, config.data.channels)
    model = models.get_model(config.model.name, num_classes=info.num_classes, dtype=config.model.dtype)
    logits = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jax.numpy.zeros((2, *shape)))[0])
    assert logits.shape == (2, info.num_classes)
