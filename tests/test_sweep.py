"""Sweeps: the search space is checked before anything runs; trials are ranked and pruned on validation accuracy,
never on test, with the spread over their seeds; a grid of real trials runs, resumes and reports."""

import csv
import itertools
import json
import re
import runpy
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from resnet_jax import checkpoint, configuration, metrics, trainer
from resnet_jax.tools import common, sweep
from resnet_jax.tools import main as resnet_jax_main
from resnet_jax.tools.sweep import report, run, spec
from tests.conftest import PYTHON, subprocess_env

# Two 4-step epochs of the smoke network on 128 synthetic images (of 160, 32 held out to rank on): a trial is mostly
# compilation, which the sweep's compile cache shares between trials.
TINY = {
    "data.synthetic_train_examples": 160,
    "data.validation_size": 32.0,
    "data.synthetic_test_examples": 64,
    "train.batch_size": 32,
    "eval.batch_size": 64,
    "train.num_epochs": 2,
}
TINY_ARGS = [f"--config.{key}={value}" for key, value in TINY.items()]
LEARNING_RATES = (0.05, 0.2)
WEIGHT_DECAYS = (0.0, 0.001)
GRID = [
    "--grid",
    "optimizer.learning_rate=" + ",".join(map(str, LEARNING_RATES)),
    "--grid",
    "optimizer.weight_decay=" + ",".join(map(str, WEIGHT_DECAYS)),
]


def sweep_command(repo_root, workdir):
    return [
        PYTHON,
        "-m",
        "resnet_jax.tools.sweep",
        "--config",
        str(repo_root / "configs/smoke.py"),
        "--workdir",
        str(workdir),
    ]


def run_sweep_cli(repo_root, workdir, cache_dir, *args, timeout=600):
    command = [*sweep_command(repo_root, workdir), *args]
    env = subprocess_env(JAX_COMPILATION_CACHE_DIR=str(cache_dir))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def read_csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def evaluated_epochs(trial_dir):
    records = map(json.loads, (trial_dir / "metrics.jsonl").read_text().splitlines())
    return [record["epoch"] for record in records if "test_accuracy" in record]


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """One XLA cache for the sweeps of this session: their trials share the init and eval programs."""
    return tmp_path_factory.mktemp("compile_cache")


def run_main(capsys, *argv):
    """`resnet-jax sweep ARGV` in this process: its exit status and its stderr."""
    try:
        code = sweep.main(list(argv))
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err.strip()


@pytest.fixture
def smoke_config(repo_root):
    return runpy.run_path(str(repo_root / "configs/smoke.py"))["get_config"]()


# ----------------------------------------------------------------------------------------------------------------
# The search space, refused before anything runs.


def test_a_config_file_without_get_config_is_refused_in_one_line(tmp_path, capsys):
    config_file = tmp_path / "settings.py"
    config_file.write_text("LEARNING_RATE = 0.1\n")
    workdir = tmp_path / "sweep"
    code, error = run_main(capsys, "--config", str(config_file), "--workdir", str(workdir), "--grid", "seed=0,1")
    assert code == 2
    assert error == (
        f"error: --config={config_file} has no get_config(); define one that returns an ml_collections.ConfigDict, "
        "as configs/smoke.py does"
    )
    assert not workdir.exists()


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("optimizer.learnin_rate=0.1,0.2", "no key 'optimizer.learnin_rate'; did you mean optimizer.learning_rate"),
        ("optimizer=0.1", "'optimizer' is a section"),
        (
            "optimizer.learning_rate=0.1,fast",
            "--grid optimizer.learning_rate=fast: optimizer.learning_rate is a number",
        ),
        ("train.batch_size=32,48.5", "--grid train.batch_size=48.5: train.batch_size is an integer"),
        ("eval.tta_flip=true,maybe", "--grid eval.tta_flip=maybe: eval.tta_flip is a bool"),
        ("schedule.boundaries=1,2", "schedule.boundaries: the key holds a tuple"),
        ("optimizer.learning_rate=0.1,-0.1", "optimizer.learning_rate=-0.1 must be a positive number"),
        ("model.name=resnet8_tiny,resnet9", "model.name='resnet9' is not known"),
    ],
)
def test_a_bad_grid_is_refused_in_one_line_before_anything_is_written(tmp_path, repo_root, capsys, argument, message):
    workdir = tmp_path / "sweep"
    code, error = run_main(
        capsys, "--config", str(repo_root / "configs/smoke.py"), "--workdir", str(workdir), "--grid", argument
    )
    assert code == 2
    assert message in error
    assert len(error.splitlines()) == 1
    assert not workdir.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grid", "seed=0,1", "--prune-after-epochs", "0"], "error: --prune-after-epochs=0 must be at least 1"),
        (["--grid", "seed=0,1", "--prune_after_epochs", "0"], "error: --prune-after-epochs=0 must be at least 1"),
        (["--grid", "seed=0,1", "--trials", "3"], "error: --trials is for --search"),
        (
            ["--grid", "seed=0,1", "--search", "seed=choice:0,1"],
            "error: give --grid KEY=V1,V2 (repeatable) or --search",
        ),
        (["--search", "seed=choice:0,1", "--trials", "2", "--sampler", "grid"], "argument --sampler: invalid choice"),
        (["--grid", "seed=0,1", "--trials", "many"], "argument --trials: invalid int value: 'many'"),
        (
            ["--grid", "seed=0,1", "--config.train.num_epoch=3"],
            "no key 'train.num_epoch'; did you mean train.num_epochs",
        ),
        (["--grid", "optimizer.learning_rate=0.1", "--seeds", "0"], "error: --seeds=0 must be a whole number"),
        (["--grid", "seed=0,1", "--seeds", "2"], "error: seed is swept and --seeds is given"),
        (
            ["--grid", "data.validation_size=0,0.1"],
            "error: data.validation_size cannot be swept: every trial is ranked on the same validation split",
        ),
        (
            ["--grid", "seed=0,1", "--config.data.validation_size=512"],
            "data.validation_size=512 holds out 512 of the 512 train examples, leaving none to train on",
        ),
        (
            ["--grid", "seed=0,1", "--config.data.validation_size=12", "--config.data.train_eval_size=501"],
            "data.train_eval_size=501 is more than the run's train split holds (500 examples, what "
            "data.validation_size leaves of 512); give at most 500",
        ),
    ],
)
def test_bad_flags_are_refused_in_one_line_and_the_old_spelling_still_works(
    tmp_path, repo_root, capsys, flags, message
):
    workdir = tmp_path / "sweep"
    code, error = run_main(capsys, "--config", str(repo_root / "configs/smoke.py"), "--workdir", str(workdir), *flags)
    assert code == 2
    assert message in error
    assert error.startswith("error: ")
    assert len(error.splitlines()) == 1
    assert not workdir.exists()


def test_resnet_jax_sweep_is_the_same_command_and_needs_a_workdir(repo_root, capsys):
    with pytest.raises(SystemExit) as stop:
        resnet_jax_main.main(["sweep", "--config", str(repo_root / "configs/smoke.py"), "--grid", "seed=0,1"])
    error = capsys.readouterr().err.strip()
    assert stop.value.code == 2
    assert error == (
        "error: resnet-jax sweep: the following arguments are required: --workdir (--help lists the options)"
    )


@pytest.mark.parametrize(
    ("searches", "trials", "message"),
    [
        (["optimizer.learning_rate=loguniform:0:0.3"], 4, "loguniform needs LOW > 0"),
        (["optimizer.weight_decay=uniform:0:2"], 4, "optimizer.weight_decay=2.0 must be in [0, 1)"),
        (["optimizer.learning_rate=normal:0:1"], 4, "unknown distribution 'normal'"),
        (["optimizer.learning_rate=uniform:0.3:0.1"], 4, "LOW must be below HIGH"),
        (["model.name=uniform:1:2"], 4, "a str key takes choice"),
        (["optimizer.learning_rate=uniform:0.01:0.3"], 0, "--search needs --trials N"),
    ],
)
def test_a_bad_search_is_refused(smoke_config, searches, trials, message):
    with pytest.raises(configuration.ConfigError, match=re.escape(message)):
        spec.make_spec(smoke_config, searches=searches, trials=trials)


def test_a_search_space_maps_to_optuna_distributions_of_the_keys_types(smoke_config):
    sweep_spec = spec.make_spec(
        smoke_config,
        searches=[
            "optimizer.learning_rate=loguniform:1e-3:0.3",
            "train.batch_size=uniform:16:64",
            "optimizer.nesterov=choice:true,false",
        ],
        trials=5,
        sampler="random",
    )
    learning_rate, batch_size, nesterov = (d.distribution() for d in sweep_spec.dimensions)
    assert learning_rate == optuna.distributions.FloatDistribution(1e-3, 0.3, log=True)
    assert batch_size == optuna.distributions.IntDistribution(16, 64)
    assert nesterov == optuna.distributions.CategoricalDistribution((True, False))
    assert (sweep_spec.sampler, sweep_spec.trials) == ("random", 5)


def test_grid_values_take_the_keys_types_and_overrides_land_in_the_config(smoke_config):
    sweep_spec = spec.make_spec(smoke_config, grids=["train.batch_size=16,32", "optimizer.learning_rate=1,0.5"])
    assert sweep_spec.grid_points() == [
        {"train.batch_size": 16, "optimizer.learning_rate": 1.0},
        {"train.batch_size": 16, "optimizer.learning_rate": 0.5},
        {"train.batch_size": 32, "optimizer.learning_rate": 1.0},
        {"train.batch_size": 32, "optimizer.learning_rate": 0.5},
    ]
    assert isinstance(sweep_spec.grid_points()[0]["optimizer.learning_rate"], float)
    trial_config = configuration.apply_overrides(smoke_config, sweep_spec.grid_points()[3])
    assert (trial_config.train.batch_size, trial_config.optimizer.learning_rate) == (32, 0.5)
    assert smoke_config.train.batch_size == 64  # the base is untouched


def test_trial_names_are_readable_distinct_and_stable():
    assert run.trial_name({"optimizer.learning_rate": 0.1, "optimizer.weight_decay": 5e-4}) == (
        "learning_rate=0.1,weight_decay=0.0005"
    )
    assert run.trial_name({"model.name": "resnet20", "eval.tta_flip": True}) == "name=resnet20,tta_flip=true"
    close = [run.trial_name({"optimizer.learning_rate": value}) for value in (0.0123451, 0.0123452)]
    assert close[0] != close[1]  # rounded alike in the name, told apart by the hash
    assert close[0] == run.trial_name({"optimizer.learning_rate": 0.0123451})


# ----------------------------------------------------------------------------------------------------------------
# Resuming and pruning, on a study without training.


def test_an_interrupted_trial_is_queued_again_with_its_parameters(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    distributions = {"optimizer.learning_rate": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    finished = study.ask(distributions)
    study.tell(finished, 0.8)
    interrupted = study.ask(distributions)
    interrupted.set_user_attr("name", "x")
    failed = study.ask(distributions)
    failed.set_user_attr("error", "non-finite loss")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)

    run._resume_interrupted(study)

    states = [trial.state for trial in study.trials]
    assert states[1] == optuna.trial.TrialState.FAIL
    assert states[3] == optuna.trial.TrialState.WAITING
    retry = study.ask(distributions)
    assert retry.params == interrupted.params
    assert retry.user_attrs["attempts"] == 2
    assert [trial.number for trial in run._counted_trials(study)] == [0, 2]


def test_the_pruning_hook_reports_evaluations_and_stops_a_trial_below_the_median():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(1, n_warmup_steps=2))
    for accuracy in (0.8, 0.9):
        good = study.ask()
        for epoch in (1, 2, 3):
            good.report(accuracy, epoch)
        study.tell(good, accuracy)
    trial = study.ask()
    reported = {1}  # a resumed trial: epoch 1 was reported before the interruption
    trial.report(0.1, 1)
    hook = run._pruning_hook(trial, reported)
    hook(1, {"validation_accuracy": 0.1, "test_accuracy": 0.9})  # already reported; below warm-up: no pruning yet
    with pytest.raises(optuna.TrialPruned, match="after epoch 2"):
        hook(2, {"validation_accuracy": 0.1, "test_accuracy": 0.95})  # test would rank it first: never looked at
    assert study.trials[2].intermediate_values == {1: 0.1, 2: 0.1}
    assert reported == {1, 2}


# ----------------------------------------------------------------------------------------------------------------
# The sweep's own loop and results over a stand-in trainer: what the sweep does between trials, in milliseconds.


class StandInTrainer:
    """`trainer.train_and_evaluate` as the sweep sees it: a config.json and one train and one eval record per
    epoch in the trial's folder, `on_evaluation` after each evaluation, and a TrainingError where told to fail.
    Each run's validation accuracy is `accuracy(config, epoch, call)`, its test accuracy `test(...)` of the same
    (by default the same value)."""

    def __init__(self, accuracy, fail_at_learning_rate=None, test=None):
        self.accuracy, self.fail_at_learning_rate, self.calls = accuracy, fail_at_learning_rate, []
        self.test = test or accuracy

    def __call__(self, config, workdir, mode="resume", on_evaluation=None):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        configuration.write_json(config, workdir / configuration.CONFIG_FILE)
        call = len(self.calls)
        self.calls.append(workdir.name)
        if config.optimizer.learning_rate == self.fail_at_learning_rate:
            raise trainer.TrainingError("non-finite loss at step 3")
        writer = metrics.MetricWriter(workdir, enabled=True)
        try:
            for epoch in range(1, config.train.num_epochs + 1):
                values = {
                    "validation_accuracy": self.accuracy(config, epoch, call),
                    "test_accuracy": self.test(config, epoch, call),
                }
                writer.write(10 * epoch, epoch, {"train_loss": 1.0 / epoch, "images_per_second": 100.0 * epoch})
                writer.write(10 * epoch, epoch, values | {"test_loss": 1.0 - values["test_accuracy"]})
                if on_evaluation:
                    on_evaluation(epoch, values)
        finally:
            writer.close()
        return values


def test_a_grid_ranks_its_trials_reports_a_failure_and_runs_nothing_again(tmp_path, smoke_config, monkeypatch):
    # Accuracy rises with the learning rate and falls with weight decay; lr 0.3 fails.
    def accuracy(config, epoch, call):
        return round(0.5 + config.optimizer.learning_rate - config.optimizer.weight_decay * 10 + 0.01 * epoch, 6)

    stand_in = StandInTrainer(accuracy, fail_at_learning_rate=0.3)
    monkeypatch.setattr(trainer, "train_and_evaluate", stand_in)
    config = configuration.apply_overrides(smoke_config, {"train.num_epochs": 2})
    grid = ["optimizer.learning_rate=0.05,0.2,0.3", "optimizer.weight_decay=0,0.001"]
    sweep_spec = spec.make_spec(config, grids=grid)
    workdir = tmp_path / "sweep"

    results = run.run_sweep(config, workdir, sweep_spec, top=2)

    assert len(stand_in.calls) == 6
    assert [(r.name, r.state) for r in results] == [
        ("learning_rate=0.2,weight_decay=0", "complete"),
        ("learning_rate=0.2,weight_decay=0.001", "complete"),
        ("learning_rate=0.05,weight_decay=0", "complete"),
        ("learning_rate=0.05,weight_decay=0.001", "complete"),
        ("learning_rate=0.3,weight_decay=0", "failed"),
        ("learning_rate=0.3,weight_decay=0.001", "failed"),
    ]
    best = results[0]
    assert (best.validation, best.test) == (common.Spread(0.72, None, 0.72, 0.72, 1),) * 2
    assert (best.epochs, best.seeds) == (2, 1)
    assert best.images_per_second == 150.0  # the median of the train records
    assert best.run_dirs == (workdir / run.TRIALS_DIR / best.name,)
    assert best.overrides == {"optimizer.learning_rate": 0.2, "optimizer.weight_decay": 0.0}
    trained = configuration.read_json(best.run_dirs[0] / configuration.CONFIG_FILE)
    assert (trained["optimizer"]["learning_rate"], trained["train"]["num_epochs"]) == (0.2, 2)
    # The config had no validation split: the sweep held out a tenth of train to rank on.
    assert trained["data"]["validation_size"] == run.DEFAULT_VALIDATION_SIZE == 0.1
    assert results[-1].error == "non-finite loss at step 3"
    assert results[-1].validation is results[-1].test is None

    rows = read_csv(workdir / report.RESULTS_CSV)
    assert [row["trial"] for row in rows] == [r.name for r in results]
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    assert (rows[0]["optimizer.learning_rate"], rows[0]["validation_accuracy_mean"]) == ("0.2", "0.72")
    assert (rows[0]["test_accuracy_mean"], rows[0]["seeds"], rows[0]["validation_accuracy_sd"]) == ("0.72", "1", "")
    assert rows[-1]["error"] == "non-finite loss at step 3"
    markdown = (workdir / report.RESULTS_MD).read_text()
    assert "6 of 6 trials (4 complete, 2 failed)" in markdown
    assert "| 1 | 0.2 | 0 | complete | 0.7200 | 0.7200 | 1 | 2.00 |" in markdown
    assert "- learning_rate=0.3,weight_decay=0.001 failed: non-finite loss at step 3" in markdown
    assert (workdir / report.PLOT_FILE).stat().st_size > 10_000

    # Again: every trial counted (a failure on its own uses up its budget), so nothing runs.
    again = run.run_sweep(config, workdir, sweep_spec, top=2)
    assert len(stand_in.calls) == 6
    assert [r.name for r in again] == [r.name for r in results]


def test_a_trial_whose_checkpoint_cannot_resume_ends_the_sweep_in_one_line_that_says_how_to_go_on(
    tmp_path, smoke_config, monkeypatch, capsys
):
    refused = checkpoint.CheckpointRefused("checkpoint 8 in T/checkpoints was written by an earlier resnet-jax")

    def refusing(config, workdir, mode="resume", on_evaluation=None):
        raise refused

    monkeypatch.setattr(trainer, "train_and_evaluate", refusing)
    sweep_spec = spec.make_spec(smoke_config, grids=["optimizer.learning_rate=0.1,0.2"])
    with pytest.raises(SystemExit) as exited:
        sweep.run_as_a_tool(smoke_config, str(tmp_path / "sweep"), sweep_spec, top=2, name="sweep")
    assert exited.value.code == 2  # bad input, not a stop the same command would get past
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (
        f"error: {refused}. In a sweep, --fresh is moving that trial's folder away: the same command then runs it anew"
    )


@pytest.mark.parametrize(
    "stop",
    [
        trainer.Preempted("SIGTERM: saved checkpoint 10; run the same command to resume"),
        metrics.MetricsWriteError("cannot write metrics.jsonl: No space left on device; checkpoint 10 is intact"),
    ],
    ids=["preempted", "full disk"],
)
def test_an_interrupted_trial_runs_first_when_its_sweep_resumes(tmp_path, smoke_config, monkeypatch, capsys, stop):
    stand_in = StandInTrainer(lambda config, epoch, call: 0.5 + config.optimizer.learning_rate)

    def stopped_on_the_second_call(config, workdir, mode="resume", on_evaluation=None):
        if len(stand_in.calls) == 1:
            stand_in.calls.append(Path(workdir).name)
            raise stop
        return stand_in(config, workdir, mode, on_evaluation)

    monkeypatch.setattr(trainer, "train_and_evaluate", stopped_on_the_second_call)
    config = configuration.apply_overrides(smoke_config, {"train.num_epochs": 2})
    sweep_spec = spec.make_spec(config, grids=["optimizer.learning_rate=0.1,0.2,0.3"])
    # As the command runs it: a pre-emption ends it at exit 0, a full disk at 1 in one line; neither fails the trial.
    status = sweep.run_as_a_tool(config, str(tmp_path / "sweep"), sweep_spec, top=2, name="sweep")
    assert status == (0 if isinstance(stop, trainer.Preempted) else 1)
    if status:
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"sweep stopped: {stop}"
    results = run.run_sweep(config, tmp_path / "sweep", sweep_spec)

    # The interrupted trial goes on before the grid's last point begins, not after it.
    assert stand_in.calls == ["learning_rate=0.1", "learning_rate=0.2", "learning_rate=0.2", "learning_rate=0.3"]
    assert [(r.name, r.state, r.attempts) for r in results] == [
        ("learning_rate=0.3", "complete", 1),
        ("learning_rate=0.2", "complete", 2),
        ("learning_rate=0.1", "complete", 1),
    ]


def test_trials_rank_by_validation_accuracy_where_test_accuracy_would_rank_them_the_other_way(
    tmp_path, smoke_config, monkeypatch
):
    # Validation rises with the learning rate, test falls with it.
    stand_in = StandInTrainer(
        lambda config, epoch, call: 0.5 + config.optimizer.learning_rate,
        test=lambda config, epoch, call: 0.9 - config.optimizer.learning_rate,
    )
    monkeypatch.setattr(trainer, "train_and_evaluate", stand_in)
    config = configuration.apply_overrides(smoke_config, {"train.num_epochs": 2})
    sweep_spec = spec.make_spec(config, grids=["optimizer.learning_rate=0.1,0.3,0.2"])
    results = run.run_sweep(config, tmp_path / "sweep", sweep_spec)
    assert [r.overrides["optimizer.learning_rate"] for r in results] == [0.3, 0.2, 0.1]
    assert [r.test.mean for r in results] == pytest.approx([0.6, 0.7, 0.8])  # reported, not ranked on
    study = optuna.load_study(study_name=run.STUDY_NAME, storage=f"sqlite:///{tmp_path / 'sweep' / run.STUDY_FILE}")
    assert study.best_trial.params == {"optimizer.learning_rate": 0.3}  # Optuna's objective: validation
    rows = read_csv(tmp_path / "sweep" / report.RESULTS_CSV)
    assert [row["optimizer.learning_rate"] for row in rows] == ["0.3", "0.2", "0.1"]


def test_seeds_train_each_trial_n_times_and_report_the_mean_sd_min_and_max(tmp_path, smoke_config, monkeypatch):
    # Seed s scores 0.6 + 0.1 s on validation (0.5 + 0.05 s on test) at a learning rate of 0.1, 0.05 less at 0.2.
    def accuracy(config, epoch, call):
        return round(0.6 + 0.1 * config.seed - (0.05 if config.optimizer.learning_rate == 0.2 else 0.0), 6)

    stand_in = StandInTrainer(accuracy, test=lambda config, epoch, call: round(0.5 + 0.05 * config.seed, 6))
    monkeypatch.setattr(trainer, "train_and_evaluate", stand_in)
    config = configuration.apply_overrides(smoke_config, {"train.num_epochs": 2, "seed": 1})
    sweep_spec = spec.make_spec(config, grids=["optimizer.learning_rate=0.2,0.1"], seeds=3)
    workdir = tmp_path / "sweep"
    results = run.run_sweep(config, workdir, sweep_spec)

    assert stand_in.calls == ["seed1", "seed2", "seed3"] * 2
    best = results[0]
    assert best.overrides == {"optimizer.learning_rate": 0.1}
    assert best.run_dirs == tuple(workdir / run.TRIALS_DIR / best.name / f"seed{seed}" for seed in (1, 2, 3))
    # Validation 0.7, 0.8, 0.9: mean 0.8, sample sd 0.1; test 0.55, 0.6, 0.65: mean 0.6, sd 0.05.
    assert best.validation == common.Spread(pytest.approx(0.8), pytest.approx(0.1), 0.7, 0.9, 3)
    assert best.test == common.Spread(pytest.approx(0.6), pytest.approx(0.05), 0.55, 0.65, 3)
    assert results[1].validation.mean == pytest.approx(0.75)
    study = optuna.load_study(study_name=run.STUDY_NAME, storage=f"sqlite:///{workdir / run.STUDY_FILE}")
    assert sorted(trial.value for trial in study.trials) == pytest.approx([0.75, 0.8])  # the seeds' mean

    row = read_csv(workdir / report.RESULTS_CSV)[0]
    assert {key: round(float(row[key]), 6) for key in row if key.startswith(("validation_", "test_"))} == {
        "validation_accuracy_mean": 0.8,
        "validation_accuracy_sd": 0.1,
        "validation_accuracy_min": 0.7,
        "validation_accuracy_max": 0.9,
        "test_accuracy_mean": 0.6,
        "test_accuracy_sd": 0.05,
        "test_accuracy_min": 0.55,
        "test_accuracy_max": 0.65,
    }
    assert row["seeds"] == "3"
    markdown = (workdir / report.RESULTS_MD).read_text()
    assert "| 1 | 0.1 | complete | 0.8000 ± 0.1000 (0.7000-0.9000) | 0.6000 ± 0.0500 (0.5500-0.6500) | 3 |" in markdown
    assert "Each trial trains 3 seeds: mean ± standard deviation (min-max)." in markdown
    assert (workdir / report.PLOT_FILE).stat().st_size > 10_000
    # A re-run with another seed count is another sweep.
    with pytest.raises(configuration.ConfigError, match="holds a different sweep"):
        run.run_sweep(config, workdir, spec.make_spec(config, grids=["optimizer.learning_rate=0.2,0.1"], seeds=2))


def test_a_search_prunes_a_trial_below_the_median_after_its_checkpoint(tmp_path, smoke_config, monkeypatch):
    # Each trial scores worse than the one before: once two have finished, the third is below their median.
    stand_in = StandInTrainer(lambda config, epoch, call: 0.9 - 0.1 * call + 0.01 * epoch)
    monkeypatch.setattr(trainer, "train_and_evaluate", stand_in)
    config = configuration.apply_overrides(smoke_config, {"train.num_epochs": 4})
    search = ["optimizer.learning_rate=loguniform:0.01:0.5"]
    sweep_spec = spec.make_spec(config, searches=search, trials=3, sampler="random", prune=True, prune_after_epochs=2)

    results = run.run_sweep(config, tmp_path / "sweep", sweep_spec)

    assert [r.state for r in results] == ["complete", "complete", "pruned"]
    assert [r.epochs for r in results] == [4, 4, 2]  # pruned at the first epoch it could be
    study = optuna.load_study(study_name=run.STUDY_NAME, storage=f"sqlite:///{tmp_path / 'sweep' / run.STUDY_FILE}")
    assert [trial.intermediate_values for trial in study.trials][2] == {1: 0.71, 2: 0.72}
    assert "1 pruned" in (tmp_path / "sweep" / report.RESULTS_MD).read_text()


# ----------------------------------------------------------------------------------------------------------------
# A real 2x2 grid of smoke trials.


@pytest.mark.slow
def test_a_2x2_grid_runs_four_trials_reports_them_and_skips_them_when_run_again(
    tmp_path, repo_root, compile_cache, smoke_config
):
    workdir = tmp_path / "sweep"
    result = run_sweep_cli(repo_root, workdir, compile_cache, *TINY_ARGS, *GRID)
    assert result.returncode == 0, result.stderr[-3000:]

    trial_dirs = sorted((workdir / run.TRIALS_DIR).iterdir())
    assert len(trial_dirs) == 4
    trained = set()
    for trial_dir in trial_dirs:
        config = json.loads((trial_dir / configuration.CONFIG_FILE).read_text())
        trained.add((config["optimizer"]["learning_rate"], config["optimizer"]["weight_decay"]))
        assert config["train"]["num_epochs"] == 2
        assert 8 in [int(path.name) for path in (trial_dir / "checkpoints").iterdir()]  # the final step
        assert evaluated_epochs(trial_dir) == [1.0, 2.0]
    assert trained == set(itertools.product(LEARNING_RATES, WEIGHT_DECAYS))
    # Its output is captured (not a terminal): a line as each trial starts and ends, with i/N and the ETA (unknown
    # until one trial has finished), and the trials' own progress lines.
    started = re.findall(r"trial (\d)/4 started: \S+ \(ETA (\S+)\)", result.stderr)
    ended = re.findall(r"trial (\d)/4 complete in \S+: \S+ \(ETA (\S+)\)", result.stderr)
    assert [index for index, _ in started] == [index for index, _ in ended] == ["1", "2", "3", "4"], result.stderr
    assert started[0][1] == "?" and all(eta != "?" for _, eta in started[1:])
    assert ended[-1][1] == "0s"
    assert re.search(r"step 8/8 \(epoch 2/2\) loss \S+ acc \S+ \S+ img/s ETA 0s", result.stderr)

    rows = read_csv(workdir / report.RESULTS_CSV)
    assert {(float(r["optimizer.learning_rate"]), float(r["optimizer.weight_decay"])) for r in rows} == trained
    finals = [float(r["validation_accuracy_mean"]) for r in rows]
    assert finals == sorted(finals, reverse=True)
    for row in rows:
        summary = metrics.summarize_run(workdir / run.TRIALS_DIR / row["trial"])
        assert float(row["validation_accuracy_mean"]) == pytest.approx(summary["final_validation_accuracy"])
        assert float(row["test_accuracy_mean"]) == pytest.approx(summary["final_test_accuracy"])
        assert row["state"] == "complete"
        assert float(row["wall_seconds"]) > 0
        assert float(row["images_per_second"]) > 0
    assert (workdir / report.RESULTS_MD).read_text().count("| complete |") == 4
    assert (workdir / report.PLOT_FILE).stat().st_size > 10_000

    # The same sweep again, in-process: nothing trains, nothing changes.
    config = configuration.apply_overrides(smoke_config, TINY)
    sweep_spec = spec.make_spec(config, grids=[GRID[1], GRID[3]])
    metrics_before = {path: path.read_text() for path in workdir.glob("trials/*/metrics.jsonl")}
    results = run.run_sweep(config, workdir, sweep_spec)
    assert [r.name for r in results] == [row["trial"] for row in rows]
    assert {path: path.read_text() for path in metrics_before} == metrics_before
    study = optuna.load_study(study_name=run.STUDY_NAME, storage=f"sqlite:///{workdir / run.STUDY_FILE}")
    assert len(study.trials) == 4
    assert len(read_csv(workdir / report.RESULTS_CSV)) == 4

    # The workdir holds this sweep: another grid, or another base config, is refused.
    other_grid = spec.make_spec(config, grids=["optimizer.learning_rate=0.05,0.3", GRID[3]])
    with pytest.raises(configuration.ConfigError, match="holds a different sweep"):
        run.run_sweep(config, workdir, other_grid)
    longer = configuration.apply_overrides(config, {"train.num_epochs": 3})
    with pytest.raises(configuration.ConfigError, match=re.escape("train.num_epochs: 2 -> 3")):
        run.run_sweep(longer, workdir, sweep_spec)


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_resumes_that_trial_from_its_checkpoint(tmp_path, repo_root, compile_cache):
    workdir = tmp_path / "sweep"
    # Six epochs with synchronous saves: the kill lands after the first checkpoint and well before the last.
    args = [*TINY_ARGS, "--config.train.num_epochs=6", "--config.checkpoint.async_save=false"]
    args += ["--grid", "optimizer.learning_rate=0.1"]
    process = subprocess.Popen(
        [*sweep_command(repo_root, workdir), *args],
        env=subprocess_env(JAX_COMPILATION_CACHE_DIR=str(compile_cache)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first_checkpoint = workdir / run.TRIALS_DIR / "learning_rate=0.1" / "checkpoints" / "4"
    deadline = time.monotonic() + 500
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first_checkpoint.exists()

    result = run_sweep_cli(repo_root, workdir, compile_cache, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "was interrupted; it resumes from its newest checkpoint" in result.stderr
    resumed_at = int(result.stderr.split("resumed from checkpoint ")[1].split()[0])
    assert 4 <= resumed_at < 24
    (row,) = read_csv(workdir / report.RESULTS_CSV)
    assert (row["state"], row["attempts"], float(row["epochs"])) == ("complete", "2", 6.0)
    assert evaluated_epochs(workdir / run.TRIALS_DIR / row["trial"]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
