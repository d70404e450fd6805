"""The tools' one flag convention: argparse, `--config FILE` with `--config.key=value` overrides loaded by the
project's own `configuration`, and every bad input ended in one line on stderr with exit status 2; and `Spread`, how
the tools report a figure over several runs (seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import os
import statistics
import sys
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import ml_collections

from resnet_jax import atomic, configuration, errors, lock
from resnet_jax.checkpoint import CheckpointError
from resnet_jax.configuration import ConfigError
from resnet_jax.data import DataError

BAD_INPUT = 2  # exit status for a config, flag, file or data problem; 1 is a run that had to stop
INPUT_ERRORS = (ConfigError, DataError, CheckpointError, atomic.NameTooLongError)
CONFIG_OVERRIDE_PREFIX = "--config."


def fail(message: object) -> NoReturn:
    """Ends a command with `message` as one line on stderr, exit status 2."""
    print("error: " + errors.one_line(message), file=sys.stderr, flush=True)
    raise SystemExit(BAD_INPUT)


def plural(count: int, noun: str) -> str:
    """`1 device`, `3 devices`: a count with its noun."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


@dataclasses.dataclass(frozen=True)
class Spread:
    """A figure over several runs (seeds): its mean, sample standard deviation (None for one run), min and max."""

    mean: float
    sd: float | None
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread | None:
        """The spread of the values given (None for a run that has none); None when no run has one."""
        present = [value for value in values if value is not None]
        if not present:
            return None
        sd = statistics.stdev(present) if len(present) > 1 else None
        return cls(statistics.fmean(present), sd, min(present), max(present), len(present))

    def text(self) -> str:
        """`0.8571 ± 0.0725 (0.8012-0.9106)`, or `0.9084` for one run."""
        if self.sd is None:
            return f"{self.mean:.4f}"
        return f"{self.mean:.4f} ± {self.sd:.4f} ({self.low:.4f}-{self.high:.4f})"


def cannot_write(path: str | os.PathLike, error: OSError, flag: str) -> str:
    """The one line of a write that failed: the path, the system's reason, and the flag that chooses another."""
    return f"cannot write {path} ({error.strerror or error}); give {flag} a place you can write"


@contextlib.contextmanager
def writing_into(out: str | os.PathLike, runs: Sequence[str | os.PathLike] = (), flag: str = "--out") -> Iterator[None]:
    """Holds, shared with other tools, the lock of the workdir that `out` lies in (one of the `runs` the tool reads,
    or any run or sweep) from before the tool reads the runs until it has written `out`: a training of that workdir
    cannot start meanwhile (its --fresh would archive the run from under the tool), and while one holds it the tool
    ends at once in one line, exit status 2, naming the holder and `flag`. Nothing is held for an `out` outside
    every workdir: reading a run while it trains stays allowed."""
    workdir = lock.enclosing_workdir(out, runs)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(lock.sharing(workdir, flag))
        except lock.WorkdirBusy as error:
            fail(error)
        yield


def _check_names(path: Path, flag: str) -> None:
    try:
        atomic.check_names(path, flag)
    except atomic.NameTooLongError as error:
        fail(error)


def _file_in_the_way(path: Path) -> Path | None:
    """The first part of `path`, from the root down, that is a file where a folder has to be."""
    return next((part for part in (*reversed(path.parents), path) if part.exists() and not part.is_dir()), None)


def output_folder(path: str | os.PathLike, flag: str) -> Path:
    """A folder the tool writes into, created (with its parents) when missing; one line when it cannot be."""
    path = Path(path).expanduser()
    _check_names(path, flag)
    blocking = _file_in_the_way(path)
    if blocking == path:
        fail(f"{flag} {path} is a file; give a folder (it is created when missing)")
    if blocking is not None:
        fail(f"{flag} {path} cannot be created: {blocking} is a file, not a folder; give {flag} another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(cannot_write(path, error, flag))
    # access(2) also answers EROFS for root on a read-only filesystem, where permission bits do not stop root.
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"cannot write into {path} (read-only or not yours); give {flag} a place you can write")
    return path


def output_file(path: str | os.PathLike, flag: str, suffixes: Sequence[str] = (), example: str = "out") -> Path:
    """A file the tool writes, its folder created when missing; one line for a folder, a suffix it cannot write
    (`suffixes`, e.g. (".png",)), or a place it cannot write. `example` is a file name the fix suggests."""
    path = Path(path).expanduser()
    _check_names(path, flag)
    if path.is_dir():
        name = example + (suffixes[0] if suffixes else "")
        fail(f"{flag} {path} is a folder; give a file name, e.g. {path / name}")
    if suffixes and path.suffix.lower() not in suffixes:
        fail(f"{flag} {path}: the file name must end in {', '.join(suffixes)}, e.g. {path.with_suffix(suffixes[0])}")
    blocking = _file_in_the_way(path.parent)
    if blocking is not None:
        fail(f"{flag} {path} cannot be created: {blocking} is a file, not a folder; give {flag} another path")
    output_folder(path.parent, flag)
    if path.exists() and not os.access(path, os.W_OK):
        fail(f"cannot overwrite {path} (read-only or not yours); give {flag} another file")
    return path


def version() -> str:
    """This package's version: the installed distribution's, else pyproject.toml's beside the package."""
    try:
        return importlib.metadata.version("resnet-jax")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
        return str(project["project"]["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def version_line() -> str:
    return f"resnet-jax {version()}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each option's default shown where it has one that its help does not already
    state: `(default: 20,56)`."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or action.required
            or action.nargs == 0  # --fresh, --json, --version: a switch's default is its absence
            or default is None
            or default == argparse.SUPPRESS
            or default == []
            or "default" in text.lower()
        ):
            return text
        if isinstance(default, (list, tuple)):
            return text + f" (default: {','.join(map(str, default))})"
        return text + " (default: %(default)s)"


def split_list(values: str | Sequence[str]) -> list[str]:
    """The tools' one way of giving a list: comma-separated (`A,B`); several words (`A B`, the older form of some
    flags) are accepted too, and empty items dropped."""
    words = [values] if isinstance(values, str) else list(values)
    return [item.strip() for word in words for item in word.split(",") if item.strip()]


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (argparse's own print the usage first), exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (--help lists the options)")


def parser(name: str, description: str) -> ArgumentParser:
    """The parser of `resnet-jax NAME`; `description` is the tool's module docstring (its first paragraph shows)."""
    parser = ArgumentParser(prog=f"resnet-jax {name}", description=description, formatter_class=HelpFormatter)
    add_version_argument(parser)
    return parser


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=version_line(), help="print the version and exit")


def add_subcommands(parser: argparse.ArgumentParser, names: Sequence[str]) -> argparse._SubParsersAction:
    """`parser`'s subcommands (`data info|download|prepare`), each built as `parser` is: the same one-line errors,
    defaults in --help and --version."""
    return parser.add_subparsers(
        dest="command", required=True, metavar="{" + ",".join(names) + "}", parser_class=ArgumentParser
    )


def add_subcommand(commands: argparse._SubParsersAction, name: str, help_text: str) -> ArgumentParser:
    sub = commands.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
    add_version_argument(sub)
    return sub


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE[:ARG]",
        help="a configs/*.py file whose get_config() returns the run's ConfigDict; override any key with "
        "--config.section.key=value (e.g. --config.train.num_epochs=3)",
    )


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`argv` without its `--config.key=value` (or `--config.key value`) arguments, and those as `key=value`."""
    rest, overrides, args = [], [], iter(argv)
    for arg in args:
        if arg.startswith(CONFIG_OVERRIDE_PREFIX):
            text = arg[len(CONFIG_OVERRIDE_PREFIX) :]
            if "=" not in text:
                value = next(args, None)
                if value is None:
                    fail(f"{arg}: give a value, e.g. {arg}=VALUE")
                text = f"{text}={value}"
            overrides.append(text)
        else:
            rest.append(arg)
    return rest, overrides


def with_overrides(config: ml_collections.ConfigDict, values: dict[str, object]) -> ml_collections.ConfigDict:
    """`config` with typed values set, a key that does not fit ending in one line (a flag that sets a key)."""
    try:
        return configuration.apply_overrides(config, values)
    except ConfigError as error:
        fail(error)


def parse_with_config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
    """Parses `argv` (default: the command line) and loads `--config` with its overrides; a bad file or override
    ends in one line."""
    rest, overrides = split_config_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    try:
        config = configuration.load_config_file(args.config)
        config = configuration.apply_override_texts(config, overrides)
    except ConfigError as error:
        fail(error)
    return args, config
