"""Where dataset files live and how they are read: the data root, download, validated loading.

>>> spec = get_dataset("mnist")
>>> train, test = load_dataset(spec, resolve_data_root("../shared/data"))
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.data.idx import read_idx_pair
from cnnlab.data.registry import DatasetSpec
from cnnlab.data.splits import Split
from cnnlab.errors import DataError
from cnnlab.files import expand_path


def resolve_data_root(data_dir: str | os.PathLike | None = None, env=None) -> Path:
    """--data-dir, else $CNNLAB_DATA, else the per-user cache folder ($XDG_CACHE_HOME/cnnlab)."""
    env = os.environ if env is None else env
    if data_dir:
        return expand_path(data_dir)
    if env.get("CNNLAB_DATA"):
        return expand_path(env["CNNLAB_DATA"])
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
