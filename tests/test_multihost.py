"""Multi-host data parallelism on one machine: two processes (gloo collectives, 2 CPU devices each) form one 4-device
mesh and must train like one process with 4 devices, to rounding: gloo's cross-process all-reduce sums in another
order than XLA's in-process one."""

import socket
import subprocess

import jax
import numpy as np
import pytest

from resnet_jax import checkpoint, experiment, metrics
from tests.conftest import REPO_ROOT, assert_eval_records_close, load_config, subprocess_env, train_command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def params_at(workdir, step):
    tree, _ = checkpoint.Checkpointer(workdir / "checkpoints", create=False).restore(step, None)
    return jax.device_get(tree["params"])


def run_two_processes(workdir, *overrides: str, flags: tuple[str, ...] = ()) -> list[str]:
    """`train.py` as two processes of 2 CPU devices each; returns their outputs once both succeeded."""
    address = f"127.0.0.1:{free_port()}"
    workers = [
        subprocess.Popen(
            train_command(
                workdir,
                "smoke",
                *overrides,
                f"distributed.coordinator_address={address}",
                "distributed.num_processes=2",
                f"distributed.process_id={index}",
            )
            + list(flags),
            env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(2)
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    for index, (worker, output) in enumerate(zip(workers, outputs, strict=True)):
        assert worker.returncode == 0, (
            f"process {index} failed:\n{output[-3000:]}\nprocess {1 - index}:\n{outputs[1 - index][-3000:]}"
        )
    return outputs


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_the_same_devices(tmp_path):
    # XLA's convolutions on both sides: with oneDNN's, on an AMD EPYC (Zen 4), the two layouts ended further apart
    # than rounding explains (weights 3% of their moves apart, test loss 6e-4), an open question of the oneDNN
    # extension, not of the data parallelism this test checks.
    overrides = ("train.num_epochs=2", "model.conv_backend=xla")
    two_hosts, one_host = tmp_path / "two_processes", tmp_path / "one_process"
    run_two_processes(two_hosts, *overrides)
    subprocess.run(
        train_command(one_host, "smoke", *overrides),
        env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )

    # Same devices and batches, but the gradients' all-reduce runs through gloo: apart by reassociation only, which
    # training then amplifies step by step (to 1e-3 relative over 16 steps on an AMD EPYC). So each weight must
    # agree to 1% of how far it moved from its initial value; a process training on its own shard alone, or
    # skipping the all-reduce, misses that by far.
    initial = experiment.build(load_config("smoke", **{"train.num_epochs": 2})).new_state().params
    trajectories = zip(
        jax.tree.leaves(jax.device_get(initial)),
        jax.tree.leaves(params_at(two_hosts, 16)),
        jax.tree.leaves(params_at(one_host, 16)),
        strict=True,
    )
    for start, two_processes, one_process in trajectories:
        moved = np.linalg.norm(two_processes - start)
        assert moved > 0
        assert np.linalg.norm(two_processes - one_process) <= 1e-2 * moved
    # One metrics file and one set of checkpoints, written once (by process 0 and by orbax).
    evals = [r for r in metrics.read_metrics(two_hosts) if "test_accuracy" in r]
    assert [r["step"] for r in evals] == [8, 16]
    assert_eval_records_close(evals, [r for r in metrics.read_metrics(one_host) if "test_accuracy" in r])
    assert sorted(p.name for p in (two_hosts / "checkpoints").iterdir()) == ["16", "8"]


@pytest.mark.slow
def test_two_processes_finetune_from_one_archived_run(tmp_path):
    workdir = tmp_path / "run"
    run_two_processes(workdir, "train.num_epochs=1")
    old_params = params_at(workdir, 8)
    # Another data config in the same workdir, fine-tuned from the archived run's weights.
    outputs = run_two_processes(
        workdir, "train.num_epochs=1", "data.synthetic_train_examples=256", flags=("--finetune",)
    )
    archives = list((workdir / "archive").iterdir())
    assert len(archives) == 1, archives  # one folder, named alike by both processes
    assert sorted(p.name for p in (archives[0] / "checkpoints").iterdir()) == ["8"]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4"]
    assert "done: step 4" in outputs[0]
    start = np.concatenate([np.ravel(x) for x in jax.tree.leaves(old_params)])
    end = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params_at(workdir, 4))])
    assert np.linalg.norm(end - start) < 0.5 * np.linalg.norm(start)  # started from the old weights, not afresh
