"""The device-resident training order: each epoch a shuffle of every row, its own for each epoch, fixed by the run's
key. (Across devices, that each row is drawn at most once an epoch: test_parallel.py.)"""

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import parallel, pipeline

ROWS = 64


def permutation(seed: int, epoch: int) -> np.ndarray:
    key_data = jax.random.key_data(jax.random.key(seed))
    mesh = parallel.make_mesh(jax.devices()[:1])
    return np.asarray(pipeline.epoch_permutation(key_data, jnp.int32(epoch), ROWS, mesh))


def test_each_epoch_is_a_shuffle_of_every_row_of_its_own_fixed_by_the_key():
    first = permutation(seed=0, epoch=0)
    np.testing.assert_array_equal(np.sort(first), np.arange(ROWS))  # every row once
    # Shuffled: of 64 rows, an order that leaves more than a few in place is no shuffle (a uniform one fixes 1 on
    # average).
    assert np.sum(first == np.arange(ROWS)) < 8
    np.testing.assert_array_equal(permutation(seed=0, epoch=0), first)  # a resume draws the same order again
    second = permutation(seed=0, epoch=1)
    np.testing.assert_array_equal(np.sort(second), np.arange(ROWS))
    assert np.sum(second == first) < 8  # the next epoch is another order, not the same one again
    assert np.sum(permutation(seed=1, epoch=0) == first) < 8  # and another seed another order
