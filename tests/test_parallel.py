"""Data parallelism over 8 forced CPU devices (in a subprocess, since the device count is fixed at JAX import)."""

import pytest

from tests.conftest import run_multidevice_probe


@pytest.fixture(scope="module")
def probe() -> dict:
    return run_multidevice_probe("tests.multidevice_probe")


def test_probe_ran_on_eight_devices(probe):
    assert probe["device_count"] == 8


def test_one_step_on_eight_devices_equals_one_device(probe):
    # Same global batch: BN statistics over the global batch and the mean gradient make the two runs agree.
    assert probe["step_max_difference"] < 1e-5
    # Its gradient-flow metrics too (resnet8_tiny: stem, three stages, head): sharded, they are the global ones.
    assert len(probe["gradient_flow_keys"]) == 9


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_a_mixed_step_on_eight_devices_equals_one_device(probe, mode):
    # One lambda and one box for the global batch, each image paired across devices: sharding changes nothing.
    across_devices, against_unmixed = probe["mixed_step_max_difference"][mode]
    assert across_devices < 1e-5 and against_unmixed > 1e-3


@pytest.mark.parametrize("case", ["37/1", "37/3", "37/5", "64/1", "64/3", "64/5"])
def test_eval_batches_visit_every_example_exactly_once(probe, case):
    num_examples = int(case.split("/")[0])
    assert sorted(probe["eval_coverage"][case]) == list(range(num_examples))


def test_a_training_epoch_draws_each_row_at_most_once(probe):
    rows = probe["train_epoch_rows"]
    # 43 examples on 8 devices: 40 are used (5 per device), in batches of 2 per device -> 2 steps of 16 rows.
    assert len(rows) == 32 and len(set(rows)) == 32 and max(rows) < 40


def test_the_scanned_train_program_runs_as_the_per_step_one_on_eight_devices(probe):
    # Two steps of 8 examples, one a device: in one lax.scan (accelerators) or two dispatches (the CPU).
    assert probe["scanned_against_per_step"] < 1e-5
