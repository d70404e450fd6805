"""Every key of the config refused where it is read: a bad type, range or relation ends `train` in one line on
stderr naming the key, exit status 2, no traceback and nothing written; a bad size never hangs the trainer; and the
values at the edges of what is allowed still build."""

import subprocess

import pytest

from resnet_jax import configuration, experiment, pipeline
from resnet_jax.tools import train
from tests.conftest import REPO_ROOT, load_config, subprocess_env, train_command

PIECEWISE = "schedule.name=piecewise"
STEPS = "schedule.boundary_unit=steps"

# Overrides of configs/smoke.py (512 examples in batches of 64: 8 steps an epoch, 4 epochs, 32 steps), and what
# the line must say: the key and value, or the fix.
BAD_VALUES = {
    "negative seed": (["seed=-1"], "seed=-1 must be an integer in [0, 2**32)"),
    "seed past 32 bits": (["seed=4294967296"], "seed=4294967296"),
    "unknown model": (["model.name=resnet7"], "model.name='resnet7' is not known"),
    "model dtype": (["model.dtype=float64"], "model.dtype='float64'"),
    "model shortcut": (["model.shortcut=C"], "model.shortcut='C'"),
    "shortcut on a plain net": (["model.name=plain20", "model.shortcut=B"], "model.shortcut='B' has nothing to shape"),
    "zero-initialised plain net": (
        ["model.name=plain20", "model.zero_init_residual=true"],
        "model.zero_init_residual would zero its only path",
    ),
    "dropout of 1": (["model.dropout_rate=1.0"], "model.dropout_rate=1.0 must be in [0.0, 1.0)"),
    "conv backend": (["model.conv_backend=mkl"], "model.conv_backend='mkl' is not known"),
    "norm backend": (["model.norm_backend=cudnn"], "model.norm_backend='cudnn' is not known"),
    "unknown dataset": (["data.dataset=imagenet"], "data.dataset='imagenet'"),
    "unknown source": (["data.source=web"], "data.source='web'"),
    "files dir missing": (["data.source=files", "data.files_dir=/nonexistent/x"], "data.files_dir='/nonexistent/x'"),
    "mirror not http": (["data.download_mirror=ftp://host/cifar"], "data.download_mirror='ftp://host/cifar'"),
    "image size below the images": (["data.image_size=16"], "data.image_size=16 is smaller than the images (32)"),
    "negative image size": (["data.image_size=-3"], "data.image_size=-3"),
    "image size past memory": (["data.image_size=100000"], "data.image_size=100000: the splits' 712 images"),
    "channels": (["data.channels=2"], "data.channels=2"),
    "grey from colour": (["data.channels=1"], "data.channels=1: synthetic has 3-channel images"),
    "one mean on colour": (["data.mean=0.5"], "data.mean=(0.5,) must give one number per input channel (3)"),
    "one mean and std": (["data.mean=0.5", "data.std=0.5"], "data.mean=(0.5,)"),
    "mean on the 0-255 scale": (["data.mean=125,123,114"], "data.mean=(125, 123, 114) must be in [0, 1]"),
    "zero std": (["data.std=0,0,0"], "data.std=(0, 0, 0) must be in (0, 1]"),
    "four stds": (["data.std=0.2,0.2,0.2,0.2"], "data.std=(0.2, 0.2, 0.2, 0.2)"),
    "negative validation size": (["data.validation_size=-1"], "data.validation_size=-1.0 must be 0 (no validation"),
    "validation count not whole": (["data.validation_size=1.5"], "data.validation_size=1.5: a count of examples is a"),
    "validation of all of train": (
        ["data.validation_size=512"],
        "data.validation_size=512 holds out 512 of the 512 train examples, leaving none to train on",
    ),
    "validation of none": (["data.validation_size=0.0001"], "data.validation_size=0.0001 of 512 train examples holds"),
    "infinite validation": (["data.validation_size=1e999"], "data.validation_size=inf must be 0"),
    "negative validation seed": (
        ["data.validation_seed=-1"],
        "data.validation_seed=-1 must be an integer in [0, 2**32)",
    ),
    "validation leaves less than a batch": (
        ["data.validation_size=0.9"],
        "train.batch_size=64 is larger than the training set (51 examples)",
    ),
    # Capped, it would score fewer than config.json says it scored.
    "train sample past the train split": (
        ["data.train_eval_size=513"],
        "data.train_eval_size=513 is more than the run's train split holds (512 examples); give at most 512: "
        "--config.data.train_eval_size=512 scores all of it",
    ),
    "train sample past what the holdout leaves": (
        ["data.validation_size=64", "data.train_eval_size=500"],
        "data.train_eval_size=500 is more than the run's train split holds (448 examples, what data.validation_size "
        "leaves of 512); give at most 448",
    ),
    "negative train examples": (["data.synthetic_train_examples=-5"], "data.synthetic_train_examples=-5"),
    "negative test examples": (["data.synthetic_test_examples=-5"], "data.synthetic_test_examples=-5"),
    "train set below a batch": (
        ["data.synthetic_train_examples=10"],
        "train.batch_size=64 is larger than the training",
    ),
    "negative crop padding": (["augment.crop_padding=-1"], "augment.crop_padding=-1"),
    "crop padding past the image": (["augment.crop_padding=100"], "augment.crop_padding=100 must be below the image"),
    "crop padding of the image": (["augment.crop_padding=32"], "augment.crop_padding=32"),
    "pad mode": (["augment.pad_mode=wrap"], "augment.pad_mode='wrap'"),
    "cutout past the image": (["augment.cutout_size=100"], "augment.cutout_size=100 is larger than the images (32)"),
    "negative cutout": (["augment.cutout_size=-2"], "augment.cutout_size=-2"),
    "negative mixup alpha": (["augment.mixup_alpha=-0.2"], "augment.mixup_alpha=-0.2 must be 0 (off) or a positive"),
    "infinite cutmix alpha": (["augment.cutmix_alpha=1e999"], "augment.cutmix_alpha=inf"),
    "mix probability past 1": (["augment.mix_prob=1.5"], "augment.mix_prob=1.5 must be a probability, in [0, 1]"),
    "negative switch probability": (["augment.switch_prob=-0.1"], "augment.switch_prob=-0.1 must be a probability"),
    "mixing a batch of one": (
        ["augment.cutmix_alpha=1.0", "train.batch_size=1"],
        "train.batch_size=1 has only itself; give a batch of 2 or more",
    ),
    "zero batch": (["train.batch_size=0"], "train.batch_size=0"),
    "negative steps": (["train.num_steps=-5"], "train.num_steps=-5"),
    "negative epochs beside steps": (["train.num_epochs=-1", "train.num_steps=5"], "train.num_epochs=-1"),
    "no length": (["train.num_epochs=0"], "train.num_epochs=0: the run has no length"),
    "two lengths": (
        ["train.num_steps=5", "train.num_epochs=2"],
        "train.num_steps=5 and train.num_epochs=2 both set the run's length; set train.num_steps=0 to train by epochs",
    ),
    "negative steps per call": (["train.steps_per_call=-1"], "train.steps_per_call=-1"),
    "log every 0 steps": (["train.log_every_steps=0"], "train.log_every_steps=0"),
    "label smoothing of 1": (["train.label_smoothing=1.0"], "train.label_smoothing=1.0"),
    "ema decay past 1": (["train.ema_decay=1.5"], "train.ema_decay=1.5"),
    "gradient flow not a bool": (["train.gradient_flow=yes"], "train.gradient_flow is a bool"),
    "non-finite policy": (["train.on_nonfinite=ignore"], "train.on_nonfinite='ignore'"),
    "unknown optimizer": (["optimizer.name=lamb"], "optimizer.name='lamb'"),
    "zero learning rate": (["optimizer.learning_rate=0"], "optimizer.learning_rate=0.0 must be a positive number"),
    "infinite learning rate": (["optimizer.learning_rate=1e999"], "optimizer.learning_rate=inf"),
    "momentum of 1": (["optimizer.momentum=1.0"], "optimizer.momentum=1.0 must be in [0, 1)"),
    "nesterov without momentum": (
        ["optimizer.nesterov=true", "optimizer.momentum=0"],
        "optimizer.nesterov=True needs momentum, and optimizer.momentum is 0; set optimizer.momentum above 0",
    ),
    # Issue 36: momentum is 0.9 here, so the line must not ask for momentum above 0.
    "nesterov under adam": (
        ["optimizer.nesterov=true", "optimizer.name=adam", "optimizer.momentum=0.9"],
        "optimizer.nesterov=True applies to sgd only, and optimizer.name is 'adam'; set optimizer.nesterov=false for "
        "adam",
    ),
    "negative weight decay": (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1"),
    "negative clip": (["optimizer.clip_grad_norm=-1"], "optimizer.clip_grad_norm=-1.0 must be a number of 0 or more"),
    "b1 past 1": (["optimizer.b1=1.5"], "optimizer.b1=1.5 must be in [0, 1)"),
    "b2 of 1": (["optimizer.b2=1.0"], "optimizer.b2=1.0"),
    "zero eps": (["optimizer.eps=0"], "optimizer.eps=0.0 must be a positive number"),
    "unknown schedule": (["schedule.name=linear"], "schedule.name='linear'"),
    "boundary unit": (["schedule.boundary_unit=minutes"], "schedule.boundary_unit='minutes'"),
    "warm-up mode": (["schedule.warmup_mode=cubic"], "schedule.warmup_mode='cubic'"),
    "fraction past the run": ([PIECEWISE, "schedule.boundaries=0.5,1.5"], "schedule.boundaries=(0.5, 1.5) are fract"),
    "steps past the run": (
        [PIECEWISE, STEPS, "schedule.boundaries=100,200"],
        "schedule.boundaries=(100, 200) (steps) fall on steps (100, 200) of this run of 32 steps",
    ),
    "epochs past the run": (
        [PIECEWISE, "schedule.boundary_unit=epochs", "schedule.boundaries=2,5"],
        "give epochs between 0 and 4",
    ),
    "decreasing boundaries": ([PIECEWISE, "schedule.boundaries=0.75,0.5"], "must be positive and increasing"),
    "two boundaries on one step": ([PIECEWISE, "schedule.boundaries=0.5,0.51"], "fall on steps (16, 16)"),
    "boundary in the warm-up": (
        [PIECEWISE, STEPS, "schedule.boundaries=4,20", "schedule.warmup_epochs=1"],
        "after the warm-up's 8 steps; give steps between 8 and 32",
    ),
    "negative decay factor": ([PIECEWISE, "schedule.decay_factor=-1"], "schedule.decay_factor=-1.0 must be a positive"),
    "zero decay factor": (["schedule.decay_factor=0"], "schedule.decay_factor=0.0"),
    "negative warm-up": (["schedule.warmup_epochs=-5"], "schedule.warmup_epochs=-5.0"),
    "warm-up past the run": (["schedule.warmup_epochs=100"], "schedule.warmup_epochs=100.0 is 800 steps, no shorter"),
    "warm-up of no step": (["schedule.warmup_epochs=0.01"], "schedule.warmup_epochs=0.01 is less than half a step"),
    "pct_start past 1": (["schedule.pct_start=1.5"], "schedule.pct_start=1.5 must be in (0, 1)"),
    "pct_start of 0": (["schedule.name=onecycle", "schedule.pct_start=0"], "schedule.pct_start=0.0 must be in (0, 1)"),
    "end factor past 1": (["schedule.end_factor=2"], "schedule.end_factor=2.0 must be in [0, 1]"),
    "negative warm-up factor": (["schedule.warmup_factor=-1"], "schedule.warmup_factor=-1.0"),
    "warm-up under onecycle": (["schedule.name=onecycle", "schedule.warmup_epochs=1"], "does nothing under onecycle"),
    "constant warm-up at 0": (
        ["schedule.warmup_mode=constant", "schedule.warmup_epochs=1"],
        "schedule.warmup_factor=0.0 with warmup_mode=constant holds the rate at 0",
    ),
    "zero eval batch": (["eval.batch_size=0"], "eval.batch_size=0"),
    "eval every -1 epochs": (["eval.every_epochs=-1"], "eval.every_epochs=-1 must be an integer of at least 0"),
    "flip not a bool": (["eval.tta_flip=yes"], "eval.tta_flip is a bool"),
    "checkpoint every 0 epochs": (["checkpoint.every_epochs=0"], "checkpoint.every_epochs=0"),
    "keep no checkpoint": (["checkpoint.keep=0"], "checkpoint.keep=0"),
    "coordinator without a port": (["distributed.coordinator_address=host"], "distributed.coordinator_address='host'"),
    "coordinator port past 65535": (["distributed.coordinator_address=h:70000"], "must be HOST:PORT"),
    "negative process count": (["distributed.num_processes=-3"], "distributed.num_processes=-3"),
    "process id below -1": (["distributed.process_id=-5"], "distributed.process_id=-5"),
    "process id past the count": (
        ["distributed.num_processes=2", "distributed.process_id=2"],
        "distributed.process_id=2 must be below distributed.num_processes=2",
    ),
    # Outside a cluster: with no coordinator the run would train alone, and with no count JAX stops in a traceback.
    "processes without a coordinator": (
        ["distributed.num_processes=2", "distributed.process_id=1"],
        "without distributed.coordinator_address",
    ),
    "coordinator without a count": (
        ["distributed.coordinator_address=127.0.0.1:1234"],
        "without distributed.num_processes and distributed.process_id",
    ),
    "abbreviated key": (["optimizer.lr=0.1"], "no key 'optimizer.lr'; did you mean optimizer.learning_rate?"),
    "misspelt key": (["model.nmae=resnet20"], "did you mean model.name?"),
    "key in another section": (["train.learning_rate=0.1"], "did you mean optimizer.learning_rate?"),
}


def assert_refused_in_one_line(capsys, argv: list[str], named: str) -> None:
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    assert stop.value.code == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    assert named in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_each_bad_value_is_refused_in_one_line_naming_its_key(tmp_path, capsys, case):
    overrides, named = BAD_VALUES[case]
    workdir = tmp_path / "run"
    argv = [f"--workdir={workdir}", f"--config={REPO_ROOT / 'configs' / 'smoke.py'}"]
    assert_refused_in_one_line(capsys, argv + [f"--config.{override}" for override in overrides], named)
    assert not (workdir / "config.json").exists() and not (workdir / "checkpoints").exists()


# Values that no `--config.key=value` text can give, but a config file (or a sweep's typed values) can.
BAD_FILE_VALUES = {
    "boundaries of text under cosine": ("config.schedule.boundaries = ('abc',)", "schedule.boundaries=('abc',)"),
    "a mean of text": ("config.data.mean = ('a', 'b', 'c')", "data.mean=('a', 'b', 'c')"),
    "a bool batch": ("config.train.batch_size = True", "train.batch_size=True must be a positive integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILE_VALUES))
def test_bad_values_from_a_config_file_are_refused_too(tmp_path, capsys, case):
    line, named = BAD_FILE_VALUES[case]
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        "import runpy\n\n\ndef get_config():\n"
        f"    config = runpy.run_path({str(REPO_ROOT / 'configs' / 'smoke.py')!r})['get_config']()\n"
        f"    {line}\n    return config\n"
    )
    assert_refused_in_one_line(capsys, [f"--workdir={tmp_path / 'run'}", f"--config={recipe}"], named)


# The sizes that once looped for ever in the trainer's chunk computation, run as a user runs them.
@pytest.mark.parametrize(
    "overrides",
    [
        ["data.synthetic_train_examples=-5"],
        ["data.synthetic_test_examples=-5"],
        ["data.synthetic_train_examples=1"],
        ["train.num_steps=5", "train.num_epochs=-2"],
    ],
)
def test_bad_sizes_end_within_seconds(tmp_path, overrides):
    result = subprocess.run(
        train_command(tmp_path / "run", "smoke", *overrides),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_chunk_sizes_never_loop_on_sizes_that_cannot_advance():
    assert experiment.chunk_sizes(3, 8, 20, pipeline.DataPosition(0, 6), 6) == [1, 2, 3]
    for sizes in ((0, 8, 20), (3, -1, 20), (3, 0, 20), (3, 8, 0)):
        with pytest.raises(ValueError, match="cannot run"):
            experiment.chunk_sizes(*sizes, pipeline.DataPosition(), 0)
    # A run resumed mid-epoch with a larger batch: its epochs are now shorter than where it stopped.
    with pytest.raises(configuration.ConfigError, match="was train.batch_size changed"):
        experiment.chunk_sizes(3, 4, 20, pipeline.DataPosition(0, 6), 6)


# The edges of what is allowed, each still building.
GOOD_EDGES = {
    "largest seed": {"seed": 2**32 - 1},
    "crop padding just below the image": {"augment.crop_padding": 31, "augment.pad_mode": "reflect"},
    "cutout of the whole image": {"augment.cutout_size": 32},
    "mixing at the probabilities' ends": {
        "augment.mixup_alpha": 0.1,
        "augment.cutmix_alpha": 1.0,
        "augment.mix_prob": 0.0,
        "augment.switch_prob": 1.0,
    },
    "a batch of one unmixed": {
        "augment.mix_prob": 0.5,
        "train.batch_size": 1,
        "train.num_steps": 32,
        "train.num_epochs": 0,
    },
    "last step as a boundary": {
        "schedule.name": "piecewise",
        "schedule.boundaries": (31,),
        "schedule.boundary_unit": "steps",
    },
    "boundary in epochs": {
        "schedule.name": "piecewise",
        "schedule.boundaries": (1, 3.5),
        "schedule.boundary_unit": "epochs",
    },
    "warm-up one step short of the run": {"schedule.warmup_epochs": 31 / 8},
    "constant warm-up": {
        "schedule.warmup_mode": "constant",
        "schedule.warmup_factor": 0.1,
        "schedule.warmup_epochs": 1.0,
    },
    "onecycle late peak": {"schedule.name": "onecycle", "schedule.pct_start": 0.99},
    "numeric boundaries under cosine": {"schedule.boundaries": (7.0,)},
    "mean and std per channel": {"data.mean": (0.0, 0.5, 1.0), "data.std": (1.0, 0.5, 0.01)},
    "grey repeated to colour": {"data.dataset": "fashion_mnist", "data.channels": 3},
    "clip of 0": {"optimizer.clip_grad_norm": 0.0},
    "a train sample of the whole train split": {"data.train_eval_size": 512},
    "nesterov": {"optimizer.nesterov": True},
    "coordinator": {"distributed.coordinator_address": "10.0.0.1:1234", "distributed.num_processes": 2},
}


@pytest.mark.parametrize("case", sorted(GOOD_EDGES))
def test_values_at_the_edges_still_build(case):
    overrides = {"data.source": "synthetic"} | GOOD_EDGES[case]
    built = experiment.build(load_config("smoke", **overrides))
    assert built.total_steps == 32
