"""He et al.'s degradation experiment (2015, Figure 6) as one command: plain and residual CIFAR networks of two
depths, trained alike with several seeds (a grid sweep over `model.name`). As in the paper, the verdict reads
training error: the fitted network in evaluation mode on a fixed sample of the training images
(`data.train_eval_size`), which separates optimisation from overfitting. Its curves (training error dashed, test
error bold, over iterations) are drawn in DIR/degradation.png, and the final errors tabled in DIR/degradation.md.

  resnet-jax degradation --config configs/degradation_cpu.py --workdir runs/degradation --seeds 3
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from resnet_jax import atomic, configuration, data, experiment, interrupts, lock, metrics, models, plots, runtime
from resnet_jax.configuration import ConfigError
from resnet_jax.data import DataError
from resnet_jax.tools import common
from resnet_jax.tools import sweep as sweep_tool
from resnet_jax.tools.sweep import run, spec

PLOT_FILE = "degradation.png"
TABLE_FILE = "degradation.md"
FAMILIES = ("plain", "resnet")
FAMILY_TITLES = {"plain": "plain networks", "resnet": "ResNets"}
TRAINING_ACCURACY = f"{data.TRAIN_EVAL}_accuracy"
# Figure 6's convention: thin dashed lines the training error, bold lines the test error.
CURVES = (
    (TRAINING_ACCURACY, {"lw": 1, "ls": "--", "alpha": 0.9}, "train"),
    ("test_accuracy", {"lw": 2.2}, "test"),
)


def _parser() -> common.ArgumentParser:
    parser = common.parser("degradation", __doc__)
    common.add_config_argument(parser)
    parser.add_argument("--workdir", required=True, help="the experiment's folder: its sweep, runs, PNG and table")
    parser.add_argument("--depths", default="20,56", help="comma-separated CIFAR depths (6n+2), shallow first")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per network (seed, seed+1, ...)")
    return parser


def parse_depths(text: str) -> tuple[int, ...]:
    """`20,56` -> (20, 56); refuses what is not two or more increasing CIFAR depths the zoo has for both families."""
    try:
        depths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--depths={text!r} must be comma-separated whole numbers, e.g. 20,56") from None
    if len(depths) < 2 or list(depths) != sorted(set(depths)):
        raise ConfigError(f"--depths={text!r} must give two or more different depths, shallow first, e.g. 20,56")
    names = [f"{family}{depth}" for depth in depths for family in FAMILIES]
    missing = [name for name in names if name not in models.MODEL_REGISTRY]
    if missing:
        raise ConfigError(f"--depths={text!r}: the zoo has no {missing[0]}; the CIFAR depths are 20, 32, 44, 56, 110")
    return depths


@dataclasses.dataclass(frozen=True)
class Network:
    """One network of the experiment: its runs (one per seed), their curves and their final errors."""

    name: str
    family: str
    depth: int
    params: int
    run_dirs: tuple[Path, ...]
    total_steps: int  # a run's length: only runs evaluated at their end have final errors

    def records(self) -> list[list[dict]]:
        return [metrics.read_metrics(run_dir) for run_dir in self.run_dirs if (run_dir / metrics.METRICS_FILE).exists()]

    def final_errors(self) -> dict[str, common.Spread | None]:
        """Training error (the train sample, evaluation mode), validation and test error at the end of each run that
        has finished (one still running has no final error)."""
        finals: dict[str, list[float | None]] = {data.TRAIN_EVAL: [], data.VALIDATION: [], "test": []}
        for records in self.records():
            if _last(records, "test_accuracy") is None or _last_step(records, "test_accuracy") != self.total_steps:
                continue
            for split in finals:
                accuracy = _last(records, f"{split}_accuracy")
                finals[split].append(None if accuracy is None else 1.0 - accuracy)
        return {key: common.Spread.of(values) for key, values in finals.items()}


def _last(records: Sequence[dict], key: str) -> float | None:
    values = [record[key] for record in records if record.get(key) is not None]
    return values[-1] if values else None


def _last_step(records: Sequence[dict], key: str) -> int | None:
    steps = [record["step"] for record in records if record.get(key) is not None]
    return steps[-1] if steps else None


def _curve(runs: Sequence[Sequence[dict]], key: str) -> tuple[list[int], list[common.Spread]]:
    """The error `1 - key` at each step every run logged it, and its spread over the runs."""
    by_step: dict[int, list[float]] = {}
    for records in runs:
        for record in records:
            if record.get(key) is not None:
                by_step.setdefault(record["step"], []).append(1.0 - record[key])
    steps = [step for step, values in sorted(by_step.items()) if len(values) == len(runs)]
    return steps, [common.Spread.of(by_step[step]) for step in steps]


def networks(config: ml_collections.ConfigDict, workdir: Path, depths: Sequence[int], seeds: int) -> list[Network]:
    """Every network of the experiment, with its parameter count and its runs' folders."""
    found = []
    for family in FAMILIES:
        for depth in depths:
            name = f"{family}{depth}"
            built = experiment.build(configuration.apply_overrides(config, {"model.name": name}))
            params = models.count_params(models.init_shapes(built.model, built.input_shape)["params"])
            trial_dir = workdir / run.TRIALS_DIR / run.trial_name({"model.name": name})
            run_dirs = tuple(path for _, path in run.seed_runs(trial_dir, seeds, config.seed))
            found.append(Network(name, family, depth, params, run_dirs, built.total_steps))
    return found


def plot(path: Path, nets: Sequence[Network], title: str) -> Path:
    """Figure 6's layout: one panel per family, error against iterations, a colour per depth; thin dashed lines the
    training error, bold lines the test error (the mean over seeds, the band their min-max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(FAMILIES), figsize=(11, 4.2), sharey=True, constrained_layout=True)
    for axis, family in zip(axes, FAMILIES, strict=True):
        members = [net for net in nets if net.family == family]
        for colour, net in zip(("C0", "C3", "C2", "C1", "C4"), members, strict=False):
            runs = net.records()
            label = f"{family}-{net.depth}" if family == "plain" else f"ResNet-{net.depth}"
            for key, style, suffix in CURVES:
                steps, spreads = _curve(runs, key)
                if not steps:
                    continue
                means = [100 * spread.mean for spread in spreads]
                axis.plot(steps, means, color=colour, label=f"{label} {suffix}", **style)
                if len(runs) > 1:
                    axis.fill_between(
                        steps,
                        [100 * s.low for s in spreads],
                        [100 * s.high for s in spreads],
                        color=colour,
                        alpha=0.12,
                        lw=0,
                    )
        axis.set_title(FAMILY_TITLES[family])
        axis.set_xlabel("iterations")
        axis.grid(alpha=0.3)
        if axis.lines:  # a family whose runs have not evaluated yet has nothing to name
            axis.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    figure.suptitle(title)
    plots.save_figure(figure, path)
    plt.close(figure)
    return path


def _error_cell(spread: common.Spread | None) -> str:
    if spread is None:
        return ""
    if spread.sd is None:
        return f"{100 * spread.mean:.2f}"
    return f"{100 * spread.mean:.2f} ± {100 * spread.sd:.2f} ({100 * spread.low:.2f}-{100 * spread.high:.2f})"


def ordering(nets: Sequence[Network]) -> list[str]:
    """Whether He's ordering holds on training error: deeper plain nets worse, deeper ResNets better. The protocol's
    rule: it holds when the means are ordered and every pair's seed ranges (min-max) are apart, holds by the mean
    alone when the ranges overlap, and does not hold otherwise."""
    lines = []
    for family, deeper_is in (("plain", "worse"), ("resnet", "better")):
        members = [net for net in nets if net.family == family]
        errors = [net.final_errors()[data.TRAIN_EVAL] for net in members]
        if any(error is None for error in errors):
            lines.append(f"- {FAMILY_TITLES[family]}: not every network has a training error yet")
            continue
        pairs = list(itertools.pairwise(errors))
        if deeper_is == "worse":
            ordered = all(deep.mean > shallow.mean for shallow, deep in pairs)
            apart = all(deep.low > shallow.high for shallow, deep in pairs)
        else:
            ordered = all(deep.mean < shallow.mean for shallow, deep in pairs)
            apart = all(deep.high < shallow.low for shallow, deep in pairs)
        verdict = ("holds" if apart else "holds by the mean, within the seeds' spread") if ordered else "does NOT hold"
        figures = " → ".join(f"{net.name} {100 * error.mean:.2f}%" for net, error in zip(members, errors, strict=True))
        lines.append(
            f"- {FAMILY_TITLES[family]} (deeper should be {deeper_is}), training error: {figures}; He's ordering "
            f"{verdict}"
        )
    return lines


def table(nets: Sequence[Network], seeds: int) -> str:
    """DIR/degradation.md: each network's parameters and final errors (%, mean ± sd (min-max) over seeds)."""
    lines = [
        "| network | depth | parameters | training error % | validation error % | test error % | seeds |",
        "|---|---:|---:|---|---|---|---:|",
    ]
    for net in nets:
        errors = net.final_errors()
        done = errors["test"].runs if errors["test"] else 0
        lines.append(
            f"| {net.name} | {net.depth} | {net.params:,} | {_error_cell(errors[data.TRAIN_EVAL])} | "
            f"{_error_cell(errors[data.VALIDATION])} | {_error_cell(errors['test'])} | {done} of {seeds} |"
        )
    notes = [
        "",
        "Training error: the final network in evaluation mode on a fixed sample of the training images (unaugmented),",
        "as He et al. measured it; the verdict reads it. Validation: the split held out of train, on which anything",
        "would be chosen; test: reported only.",
        "",
        *ordering(nets),
    ]
    return "\n".join(lines + notes) + "\n"


def report(config: ml_collections.ConfigDict, workdir: Path, depths: Sequence[int], seeds: int) -> str:
    """Writes DIR/degradation.png and DIR/degradation.md from the experiment's runs; returns the table."""
    nets = networks(config, workdir, depths, seeds)
    dataset = Path(config.data.files_dir).name if config.data.dataset == data.FOLDER else config.data.dataset
    size = config.data.image_size
    title = f"plain against residual networks: {dataset} at {size}x{size}, {common.plural(seeds, 'seed')}"
    text = table(nets, seeds)
    plot(workdir / PLOT_FILE, nets, title)
    atomic.write_text(workdir / TABLE_FILE, text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    runtime.reuse_freed_memory()
    args, config = common.parse_with_config(_parser(), argv)
    try:
        depths = parse_depths(args.depths)
        if not config.data.train_eval_size:
            raise ConfigError(
                "data.train_eval_size=0: the degradation verdict reads training error, scored on a sample of the "
                "train split; give e.g. --config.data.train_eval_size=5000"
            )
        names = ",".join(f"{family}{depth}" for family in FAMILIES for depth in depths)
        config = run.with_validation(config)
        sweep = spec.make_spec(config, [f"model.name={names}"], [], seeds=args.seeds)
    except (ConfigError, DataError) as error:
        common.fail(error)
    workdir = Path(args.workdir)
    status = sweep_tool.run_as_a_tool(config, str(workdir), sweep, top=len(FAMILIES) * len(depths), name="degradation")
    if isinstance(status, int):
        return status
    again = "run the same command again (its runs are done, and are read, not trained again)"
    try:
        # The sweep's lock went with its end: the figure and table take it again (shared, as the tools do), so that
        # no training or sweep in the folder runs while they are read from its runs and written beside them.
        with lock.sharing(workdir):
            text = report(config, workdir, depths, args.seeds)
    except lock.WorkdirBusy as error:
        common.fail(f"{error}, then {again}")
    except (ConfigError, DataError) as error:
        common.fail(error)
    except OSError as error:  # the runs are saved: the command, run again, writes these from them
        common.fail(
            f"cannot write the figure and table into {workdir}: {error.strerror or error}; free some space and {again}"
        )
    print(text, flush=True)
    print(f"wrote {workdir / PLOT_FILE} and {workdir / TABLE_FILE}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(interrupts.run(main, interrupts.RESUMES))
