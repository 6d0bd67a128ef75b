"""The dataset registry: what cnnlab knows about each built-in dataset before reading it.

Importing this module needs no PyTorch, so the command line can list datasets instantly.

    >>> get_dataset("mnist").shape
    (1, 28, 28)

Besides the built-in names, `folder:PATH` names a folder of class folders (cnnlab.data.folder);
its spec is built from the folder itself where a run starts (`cnnlab.data.folder_splits`), so
`get_dataset` does not know it: `check_dataset_name` accepts it, `FolderOptions` say how to read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from cnnlab.data.preprocess import Normalization
from cnnlab.errors import ConfigError

FOLDER_PREFIX = "folder:"
KINDS = (
    "idx",
    "cifar10",
    "folder",
)  # torchvision's IDX files, CIFAR-10's binary files, folder:PATH


@dataclass(frozen=True)
class FolderOptions:
    """How a `folder:PATH` dataset is read: the settings `cnnlab.data.folder` decodes it with.

    `image_size`/`channels` None follow the images; `val_size` training images are held out
    (stratified) when the folder has no val/; `split_seed` seeds every hold-out.
    """

    path: str
    image_size: int | None = None
    channels: int | None = None
    fit: str = "crop"
    test_fraction: float = 0.1
    val_size: int = 0
    split_seed: int = 0
    strict: bool = False
    memory_budget_mb: int = 2048

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DatasetSpec:
    """What cnnlab knows about a dataset before reading it (a folder's: after scanning it)."""

    name: str
    torchvision_class: str  # also the folder name under the data root
    shape: tuple[int, int, int]  # (C, H, W)
    classes: tuple[str, ...]
    train_size: int
    test_size: int
    mean: float | tuple[float, ...]  # of the training pixels after x / 255 (one, or per channel)
    std: float | tuple[float, ...]
    description: str
    kind: str = "idx"  # how its files are read: one of KINDS
    folder: FolderOptions | None = None  # how a folder:PATH dataset is read

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def raw_folder(self) -> str:
        """Where the files are under the data root (CIFAR-10: as its tarball extracts)."""
        return "cifar-10-batches-bin" if self.kind == "cifar10" else f"{self.torchvision_class}/raw"

    def files(self, train: bool) -> tuple[str, str]:
        """The (images, labels) file names of one split, as torchvision stores them."""
        prefix = "train" if train else "t10k"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"

    def normalization(self, normalize: bool) -> Normalization:
        return Normalization(self.mean, self.std) if normalize else Normalization()

    def to_json(self) -> dict:
        """config.json's "dataset" section: built-in IDX datasets keep their three keys."""
        data = {"name": self.name, "classes": list(self.classes), "shape": list(self.shape)}
        if self.kind == "idx":
            return data
        mean, std = (list(v) if isinstance(v, tuple) else v for v in (self.mean, self.std))
        data |= {"kind": self.kind, "mean": mean, "std": std}
        data |= {"train_size": self.train_size, "test_size": self.test_size}
        if self.folder is not None:
            data |= {"path": self.folder.path, "fit": self.folder.fit}
        return data


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
        DatasetSpec(
            name="cifar10",
            torchvision_class="CIFAR10",
            shape=(3, 32, 32),
            classes=(
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ),
            train_size=50_000,
            test_size=10_000,
            mean=(0.4914, 0.4822, 0.4465),  # per channel (R, G, B), as airbench states them
            std=(0.2470, 0.2435, 0.2616),
            description="32x32 colour photos, 10 classes (Krizhevsky); the binary version",
            kind="cifar10",
        ),
    )
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def is_folder_dataset(name: str) -> bool:
    return name.startswith(FOLDER_PREFIX)


def folder_path(name: str) -> str:
    """PATH of a `folder:PATH` name; an empty PATH is a `ConfigError`."""
    path = name[len(FOLDER_PREFIX) :]
    if not path.strip():
        raise ConfigError(
            f"--dataset {name!r}: give the folder after 'folder:', e.g. folder:photos"
        )
    return path


def get_dataset(name: str) -> DatasetSpec:
    if is_folder_dataset(name):
        raise ConfigError(
            f"{name}: a folder dataset is read from its folder when a run starts "
            f"(cnnlab train --dataset {name}); this command takes a built-in dataset"
        )
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}, "
            f"or folder:PATH"
        ) from None


def check_dataset_name(name: str) -> None:
    """A built-in name, or `folder:PATH` with a PATH (the folder is read later, not here)."""
    folder_path(name) if is_folder_dataset(name) else get_dataset(name)


def folder_spec_from_json(data: dict, options: FolderOptions) -> DatasetSpec:
    """The spec of a folder run from its config.json "dataset" section and recorded options."""
    shape = tuple(int(v) for v in data["shape"])
    if len(shape) != 3 or not all(v >= 1 for v in shape):
        raise ValueError(f"shape {data['shape']} is not C, H, W")
    classes = tuple(str(c) for c in data["classes"])
    mean, std = (tuple(float(v) for v in data[key]) for key in ("mean", "std"))
    if len(mean) != shape[0] or len(std) != shape[0] or len(classes) < 2:
        raise ValueError("classes, mean and std do not fit the shape")
    return DatasetSpec(
        name=data["name"],
        torchvision_class="",
        shape=shape,
        classes=classes,
        train_size=int(data.get("train_size", 0)),
        test_size=int(data.get("test_size", 0)),
        mean=mean,
        std=std,
        description=f"image folder {options.path}",
        kind="folder",
        folder=replace(options, path=str(data.get("path", options.path))),
    )
