"""`resnet-jax data info|download|prepare`: describe a dataset's splits, download its official files (verified by
sha256), or prepare tfds data offline from official archives you already have.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from pathlib import Path

from resnet_jax import data, runtime
from resnet_jax.data import download, folder
from resnet_jax.tools import common

# The config keys a data error names, as this command's own flags spell them.
FLAGS_OF_KEYS = {
    "data.image_size": "--image-size",
    "data.files_dir": "--files-dir",
    "data.data_dir": "--data-dir",
    "data.dataset": "--dataset",
    "data.source": "--source",
}


def build_parser() -> argparse.ArgumentParser:
    parser = common.parser("data", __doc__)
    commands = common.add_subcommands(parser, ("info", "download", "prepare"))
    info = common.add_subcommand(commands, "info", "print each split's size, class histogram and mean/std")
    info.add_argument(
        "--dataset",
        default=None,
        choices=[*data.DATASETS, data.FOLDER],
        help="the dataset; folder: a folder of class folders of images (default: cifar10, or folder with "
        "--source folder)",
    )
    info.add_argument(
        "--source",
        default=None,
        choices=data.SOURCES,
        help="where to read it (default: tfds, or folder with --dataset folder)",
    )
    info.add_argument(
        "--files-dir",
        default=None,
        help="the files source's folder of official files, or the folder source's folder (or .tar/.tar.gz) holding "
        "train/<class>/* and test/<class>/* (default: none)",
    )
    info.add_argument(
        "--data-dir", default=None, help="tfds data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    info.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="pad images to this size; a folder's images are resized to it (default: native, which a folder's "
        "images must share)",
    )

    fetch = common.add_subcommand(commands, "download", "download the official files, verified by sha256")
    fetch.add_argument("--dataset", default="cifar10", choices=list(download.OFFICIAL_FILES), help="the dataset")
    fetch.add_argument(
        "--files-dir",
        "--out",
        dest="files_dir",
        default=None,
        help=f"where to put them (default: {data.default_files_dir('DATASET')})",
    )
    fetch.add_argument("--mirror", default=None, help="a base URL serving the same file names (default: none)")

    prepare = common.add_subcommand(commands, "prepare", "prepare tfds data from official archives, offline")
    prepare.add_argument(
        "--dataset",
        default="cifar10",
        choices=[n for n, i in data.DATASETS.items() if i.tfds_name],
        help="the dataset",
    )
    prepare.add_argument("--manual-dir", required=True, help="folder holding the official archive(s)")
    prepare.add_argument(
        "--data-dir",
        "--out",
        dest="data_dir",
        default=None,
        help="the tfds data dir to write (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    return parser


def in_flags(message: object) -> str:
    """A data error's line with the config keys it names written as this command's flags; a `--config.data.KEY`
    the line gives for training stays as it is."""
    text = str(message)
    for key, flag in FLAGS_OF_KEYS.items():
        text = re.sub(rf"(?<!--config\.){re.escape(key)}\b", flag, text)
    return text


def _resolve_source(args: argparse.Namespace) -> None:
    """`--dataset folder` and `--source folder` each imply the other; a folder with another dataset or source is
    refused, since a folder's classes are its own."""
    if data.FOLDER in (args.dataset, args.source):
        if args.dataset not in (None, data.FOLDER):
            common.fail(
                f"--source folder reads the classes of the folder's own subfolders, not {args.dataset}'s; leave out "
                "--dataset, or give --dataset folder"
            )
        if args.source not in (None, data.FOLDER):
            common.fail(f"--dataset folder is read by --source folder, not {args.source}; leave out --source")
        args.dataset = args.source = data.FOLDER
        if not args.files_dir:
            common.fail(
                "--source folder needs --files-dir, the folder (or .tar/.tar.gz) holding train/<class>/* and "
                "test/<class>/* images"
            )
    else:
        args.dataset = args.dataset or "cifar10"
        args.source = args.source or "tfds"


def _folder_info(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    found = data.open_folder(args.files_dir, args.image_size or 0)
    info = found.info
    print(
        f"folder {found.source}: {info.num_classes} classes ({', '.join(info.class_names)}), "
        f"image shape {info.image_shape}, source folder (read in {time.perf_counter() - start:.2f} s)"
    )
    for split in (name for name in folder.FOLDER_SPLITS if name in found.arrays):
        print(f"{split}:\n{data.describe(found.split(split), info)}")


def _info(args: argparse.Namespace) -> None:
    _resolve_source(args)
    if args.image_size is not None and args.image_size < 1:
        common.fail(f"--image-size={args.image_size} must be at least 1 (leave it out for the native size)")
    if args.source == data.FOLDER:
        _folder_info(args)
        return
    info = data.get_dataset_info(args.dataset)
    print(f"{info.name}: {info.num_classes} classes, native image shape {info.image_shape}, source {args.source}")
    for split in data.SPLITS:
        start = time.perf_counter()
        arrays = data.load_split(
            args.dataset,
            split,
            source=args.source,
            files_dir=args.files_dir,
            data_dir=args.data_dir,
            image_size=args.image_size,
        )
        print(f"{split} (read in {time.perf_counter() - start:.2f} s):\n{data.describe(arrays, info)}")


def _download(args: argparse.Namespace) -> None:
    files_dir = args.files_dir or data.default_files_dir(args.dataset)
    for name, fetched in data.fetch_official_files(args.dataset, files_dir, args.mirror).items():
        print(f"{name}: {fetched.value}")
    print(f"{args.dataset} files are in {Path(files_dir).expanduser()}")


def _prepare(args: argparse.Namespace) -> None:
    manual_dir = Path(args.manual_dir).expanduser()
    if manual_dir.exists() and not manual_dir.is_dir():
        common.fail(f"--manual-dir {manual_dir} is a file; give the folder that holds the official archive(s)")
    if args.data_dir is not None:
        common.output_folder(args.data_dir, "--data-dir")
    print(f"prepared {args.dataset} in {data.prepare(args.dataset, args.manual_dir, args.data_dir)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runtime.setup_logging()
    try:
        {"info": _info, "download": _download, "prepare": _prepare}[args.command](args)
    except common.INPUT_ERRORS as error:
        common.fail(in_flags(error) if args.command == "info" else error)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
