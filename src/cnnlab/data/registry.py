"""The dataset registry: what cnnlab knows about each built-in dataset before reading it.

Importing this module needs no PyTorch, so the command line can list datasets instantly.

    >>> get_dataset("mnist").shape
    (1, 28, 28)
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnlab.data.preprocess import Normalization
from cnnlab.errors import ConfigError


@dataclass(frozen=True)
class DatasetSpec:
    """What cnnlab knows about a dataset before reading it."""

    name: str
    torchvision_class: str  # also the folder name under the data root
    shape: tuple[int, int, int]  # (C, H, W)
    classes: tuple[str, ...]
    train_size: int
    test_size: int
    mean: float  # of the training pixels after x / 255
    std: float
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def raw_folder(self) -> str:
        return f"{self.torchvision_class}/raw"

    def files(self, train: bool) -> tuple[str, str]:
        """The (images, labels) file names of one split, as torchvision stores them."""
        prefix = "train" if train else "t10k"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"

    def normalization(self, normalize: bool) -> Normalization:
        return Normalization(self.mean, self.std) if normalize else Normalization()


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            torchvision_class="MNIST",
            shape=(1, 28, 28),
            classes=tuple(str(d) for d in range(10)),
            train_size=60_000,
            test_size=10_000,
            mean=0.1307,
            std=0.3081,
            description="handwritten digits 0-9 (LeCun, Cortes, Burges)",
        ),
        DatasetSpec(
            name="fashion-mnist",
            torchvision_class="FashionMNIST",
            shape=(1, 28, 28),
            classes=(
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
            train_size=60_000,
            test_size=10_000,
            mean=0.2860,
            std=0.3530,
            description="Zalando clothing images, 10 classes (Xiao, Rasul, Vollgraf)",
        ),
    )
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}"
        ) from None
