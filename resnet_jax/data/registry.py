"""The datasets this project knows: what each one is before it is read (`DatasetInfo`), and the form every source
returns a split in (`SplitArrays`: uint8 NHWC images, int32 labels). A leaf: numpy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPLITS = ("train", "test")  # what every source holds
VALIDATION = "validation"  # held out from train, or a folder's validation/
RUN_SPLITS = ("train", VALIDATION, "test")  # what a run reads: its train split is what the holdout leaves
# A fixed draw from the run's train split, scored unaugmented in evaluation mode: He et al.'s training error.
TRAIN_EVAL = "train_eval"
FOLDER = "folder"  # the source, and the dataset, of a run on a folder of class folders of images
SOURCES = ("tfds", "files", "synthetic", FOLDER)


class DataError(RuntimeError):
    """Data that cannot be found or read; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know of a dataset before reading it."""

    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # as distributed: (height, width, channels)
    mean: tuple[float, ...]  # per channel, on a 0-1 scale
    std: tuple[float, ...]
    split_sizes: dict[str, int]
    tfds_name: str | None = None
    download_url: str | None = None  # the official archive; its host is probed before tfds tries to download
    official_files: tuple[str, ...] = ()  # what a `files` folder or a tfds manual dir should hold

    def __post_init__(self) -> None:
        # Any source and a recorded data.class_names alike: with one class every label is right before any step.
        if len(self.class_names) < 2:
            raise DataError(
                f"{self.name} has {len(self.class_names)} class{'' if len(self.class_names) == 1 else 'es'} "
                f"({', '.join(self.class_names) or 'none'}); a classifier needs at least 2: give a dataset of several"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class SplitArrays:
    """One split in host memory."""

    images: np.ndarray  # uint8, (N, H, W, C)
    labels: np.ndarray  # int32, (N,)

    def __len__(self) -> int:
        return len(self.labels)


_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        image_shape=(32, 32, 3),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        split_sizes={"train": 50_000, "test": 10_000},
        tfds_name="cifar10",
        download_url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        official_files=(
            "cifar-10-binary.tar.gz",
            "cifar-10-batches-bin/",
            "cifar-10-python.tar.gz",
            "cifar-10-batches-py/",
        ),
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        class_names=tuple(
            (  # noqa: SIM905  (a word list reads better than 100 lines)
                "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
                "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile "
                "cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp "
                "lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom "
                "oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine "
                "possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake "
                "spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor "
                "train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
            ).split()
        ),
        image_shape=(32, 32, 3),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        split_sizes={"train": 50_000, "test": 10_000},
        tfds_name="cifar100",
        download_url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        official_files=("cifar-100-binary.tar.gz", "cifar-100-binary/", "cifar-100-python.tar.gz", "cifar-100-python/"),
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        image_shape=(28, 28, 1),
        mean=(0.2860,),
        std=(0.3530,),
        split_sizes={"train": 60_000, "test": 10_000},
        tfds_name="fashion_mnist",
        download_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz",
        official_files=_IDX_FILES,
    ),
    "mnist": DatasetInfo(
        name="mnist",
        class_names=tuple(str(digit) for digit in range(10)),
        image_shape=(28, 28, 1),
        mean=(0.1307,),
        std=(0.3081,),
        split_sizes={"train": 60_000, "test": 10_000},
        tfds_name="mnist",
        download_url="https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz",
        official_files=_IDX_FILES,
    ),
    "synthetic": DatasetInfo(
        name="synthetic",
        class_names=tuple(f"class_{index}" for index in range(10)),
        image_shape=(32, 32, 3),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        split_sizes={"train": 2_048, "test": 512},
    ),
}


def get_dataset_info(name: str) -> DatasetInfo:
    """The registry's entry for `name`; a DataError naming the choices when there is none."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"the source holds no {split!r} split; choose one of {', '.join(SPLITS)}")
