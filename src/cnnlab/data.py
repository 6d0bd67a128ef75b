"""Datasets: the registry, where files live, validated loading, and the device-resident loader.

Images are read once into uint8 tensors and kept on the training device; a batch is an index slice
of a seeded permutation, scaled by `cnnlab.preprocess.to_model_input`. No DataLoader workers, no
per-sample PIL conversion.

    >>> spec = get_dataset("mnist")
    >>> train, test = load_dataset(spec, resolve_data_root("../shared/data"))
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.errors import ConfigError, DataError
from cnnlab.idx import read_idx_pair
from cnnlab.preprocess import Normalization, to_model_input


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


def resolve_data_root(data_dir: str | os.PathLike | None = None, env=None) -> Path:
    """--data-dir, else $CNNLAB_DATA, else the per-user cache folder ($XDG_CACHE_HOME/cnnlab)."""
    env = os.environ if env is None else env
    if data_dir:
        return Path(data_dir).expanduser()
    if env.get("CNNLAB_DATA"):
        return Path(env["CNNLAB_DATA"]).expanduser()
    cache = env.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cnnlab"


def is_present(spec: DatasetSpec, root: Path) -> bool:
    """True when all four raw files of the dataset exist under `root` (validated on reading)."""
    folder = root / spec.raw_folder
    return all((folder / f).exists() for train in (True, False) for f in spec.files(train))


def download(spec: DatasetSpec, root: Path) -> None:
    """Fetch the raw files through torchvision; a failure becomes one `DataError`."""
    import torchvision.datasets  # imported here: only a download needs it

    folder = root / spec.raw_folder
    expected = ", ".join(f for train in (True, False) for f in spec.files(train))
    try:
        getattr(torchvision.datasets, spec.torchvision_class)(root=root, train=True, download=True)
    except Exception as err:  # network, HTTP, disk: torchvision raises many kinds
        reason = (str(err).strip().splitlines() or [""])[0]  # torchvision lists every mirror
        raise DataError(
            f"{spec.name} is not in {folder} and could not be downloaded ({type(err).__name__}: "
            f"{reason}). Put {expected} there, or point --data-dir / CNNLAB_DATA at a folder "
            f"holding {spec.raw_folder}/"
        ) from None


@dataclass
class Split:
    """Images as uint8 `(N, C, H, W)` and labels as int64 `(N,)`."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index) -> Split:
        return Split(self.images[index], self.labels[index])

    def to(self, device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


def load_split(spec: DatasetSpec, root: Path, train: bool) -> Split:
    images_name, labels_name = spec.files(train)
    folder = root / spec.raw_folder
    images, labels = read_idx_pair(folder / images_name, folder / labels_name, spec.num_classes)
    if tuple(images.shape[1:]) != spec.shape[1:]:
        raise DataError(
            f"{folder / images_name}: images are {tuple(images.shape[1:])}, "
            f"{spec.name} needs {spec.shape[1:]}"
        )
    return Split(images.unsqueeze(1), labels)  # (N, 1, H, W)


def load_dataset(spec: DatasetSpec, root: Path, allow_download: bool = True):
    """Return `(train, test)` splits, downloading through torchvision if the files are missing."""
    if not is_present(spec, root):
        if not allow_download:
            raise DataError(f"{spec.name} is not in {root / spec.raw_folder}")
        download(spec, root)
    return load_split(spec, root, train=True), load_split(spec, root, train=False)


@dataclass
class DataSplits:
    train: Split
    val: Split | None
    test: Split


def make_splits(
    train: Split,
    test: Split,
    val_size: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    split_seed: int = 0,
) -> DataSplits:
    """Hold out `val_size` seeded-random training images, then keep the first `train_subset`."""
    if val_size < 0 or val_size >= len(train):
        raise ConfigError(
            f"--val-size {val_size} must be between 0 and {len(train) - 1} "
            f"(the training set has {len(train)} images)"
        )
    val = None
    if val_size:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(split_seed))
        keep, held = order[:-val_size].sort().values, order[-val_size:].sort().values
        train, val = train.subset(keep), train.subset(held)
    if train_subset is not None:
        train = train.subset(slice(0, train_subset))
    if test_subset is not None:
        test = test.subset(slice(0, test_subset))
    return DataSplits(train=train, val=val, test=test)


class DeviceLoader:
    """Batches from a device-resident uint8 split: `for x, y in loader.epoch(e)`.

    The order of epoch `e` is `randperm` seeded by `(seed, e)`, so it depends on nothing else:
    a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        norm: Normalization = Normalization(),
        channels_last: bool = False,
    ):
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.norm = norm
        self.channels_last = channels_last

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = None
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen).to(self.split.labels.device)
        for start in range(0, n, self.batch_size):
            if order is None:
                idx = slice(start, start + self.batch_size)
            else:
                idx = order[start : start + self.batch_size]
            x = to_model_input(self.split.images[idx], self.norm, self.channels_last)
            yield x, self.split.labels[idx]  # (B, C, H, W), (B,)
