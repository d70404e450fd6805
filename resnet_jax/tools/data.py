"""`resnet-jax data info|download|prepare`: describe a dataset's splits, download its official files (verified by
sha256), or prepare tfds data offline from official archives you already have.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from resnet_jax import data
from resnet_jax.data import download
from resnet_jax.tools import common


def build_parser() -> argparse.ArgumentParser:
    parser = common.parser("data", __doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{info,download,prepare}")
    info = commands.add_parser("info", help="print each split's size, class histogram and mean/std")
    info.add_argument("--dataset", default="cifar10", choices=list(data.DATASETS))
    info.add_argument("--source", default="tfds", choices=data.SOURCES)
    info.add_argument("--files-dir", default=None, help="the files source's folder of official files")
    info.add_argument(
        "--data-dir", default=None, help="tfds data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    info.add_argument("--image-size", type=int, default=None, help="pad images to this size (default: native)")

    fetch = commands.add_parser("download", help="download the official files, verified by sha256")
    fetch.add_argument("--dataset", default="cifar10", choices=list(download.OFFICIAL_FILES))
    fetch.add_argument(
        "--files-dir", default=None, help=f"where to put them (default: {data.default_files_dir('DATASET')})"
    )
    fetch.add_argument("--mirror", default=None, help="a base URL serving the same file names")

    prepare = commands.add_parser("prepare", help="prepare tfds data from official archives, offline")
    prepare.add_argument("--dataset", default="cifar10", choices=[n for n, i in data.DATASETS.items() if i.tfds_name])
    prepare.add_argument("--manual-dir", required=True, help="folder holding the official archive(s)")
    prepare.add_argument(
        "--data-dir", default=None, help="tfds data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    return parser


def _info(args: argparse.Namespace) -> None:
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
    try:
        {"info": _info, "download": _download, "prepare": _prepare}[args.command](args)
    except common.INPUT_ERRORS as error:
        common.fail(error)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
