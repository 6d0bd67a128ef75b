"""Where dataset files live and how they are read: the data root, download, validated loading.

>>> spec = get_dataset("mnist")
>>> train, test = load_dataset(spec, resolve_data_root("../shared/data"))
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from cnnlab.data.identity import FileIdentity, identify
from cnnlab.data.idx import check_idx_pair, parse_idx
from cnnlab.data.registry import DatasetSpec
from cnnlab.data.splits import Split
from cnnlab.errors import DataError
from cnnlab.files import expand_path, require_regular_file

PACKAGED_ROOT = Path(__file__).parent / "packaged"  # MNIST ships with cnnlab (CC BY-SA 3.0)
MAX_RAW_BYTES = 1 << 30  # no built-in dataset file comes near 1 GiB


@dataclass(frozen=True)
class DataLocation:
    """A data root and where it came from, as the first lines of a run and config.json say."""

    root: Path
    origin: str  # "--data-dir", "CNNLAB_DATA", "user cache", "packaged copy", "recorded ..."

    def describe(self) -> str:
        return f"{self.root} ({self.origin})"


def user_cache(env=None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnlab"


def resolve_data_root(data_dir: str | os.PathLike | None = None, env=None) -> Path:
    """--data-dir, else $CNNLAB_DATA, else the per-user cache folder ($XDG_CACHE_HOME/cnnlab)."""
    env = os.environ if env is None else env
    if data_dir:
        return expand_path(data_dir)
    if env.get("CNNLAB_DATA"):
        return expand_path(env["CNNLAB_DATA"])
    return user_cache(env)


def locate_data(spec: DatasetSpec, data_dir=None, env=None) -> DataLocation:
    """Where `spec`'s files are read from: --data-dir, then $CNNLAB_DATA, then the user cache,
    then (for MNIST) the copy inside the package; else the user cache, where they are downloaded.

    An explicit --data-dir or $CNNLAB_DATA is used or refused, never skipped for another source.
    """
    env = os.environ if env is None else env
    explicit = explicit_location(data_dir, env)
    if explicit is not None:
        return explicit
    cache = user_cache(env)
    if not is_present(spec, cache) and is_present(spec, PACKAGED_ROOT):
        return DataLocation(PACKAGED_ROOT, "packaged copy")
    return DataLocation(cache, "user cache")


def explicit_location(data_dir=None, env=None) -> DataLocation | None:
    """--data-dir, else $CNNLAB_DATA, when the user gave one; None otherwise."""
    env = os.environ if env is None else env
    if data_dir:
        return DataLocation(expand_path(data_dir), "--data-dir")
    if env.get("CNNLAB_DATA"):
        return DataLocation(expand_path(env["CNNLAB_DATA"]), "CNNLAB_DATA")
    return None


def raw_path(folder: Path, name: str) -> Path | None:
    """The file `name` in `folder`, or its gzip-compressed `name.gz`; None when neither exists."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.exists() or path.is_symlink():
            return path
    return None


def is_present(spec: DatasetSpec, root: Path) -> bool:
    """True when all the dataset's files (IDX files plain or .gz) exist under `root` (validated
    on reading)."""
    if spec.kind == "cifar10":
        from cnnlab.data.cifar import is_cifar10_present

        return is_cifar10_present(root)
    folder = root / spec.raw_folder
    return all(raw_path(folder, f) is not None for t in (True, False) for f in spec.files(t))


def read_raw(path: Path) -> bytes:
    """A raw file's bytes, decompressing `.gz`; regular files only, at most `MAX_RAW_BYTES`."""
    if path.is_dir():
        raise DataError(f"{path}: expected an IDX file, found a folder")
    require_regular_file(path, DataError, MAX_RAW_BYTES)
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        with gzip.open(path, "rb") as f:
            raw = f.read(MAX_RAW_BYTES + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    if len(raw) > MAX_RAW_BYTES:
        raise DataError(f"{path}: decompresses to more than {MAX_RAW_BYTES:,} bytes")
    return raw


def download(spec: DatasetSpec, root: Path) -> None:
    """Fetch the raw files with torchvision's download helper and the published checksums.

    torchvision's dataset classes are not instantiated: they may `torch.load` legacy processed
    files, and cnnlab never unpickles. A failure becomes one `DataError`.
    """
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive

    folder = root / spec.raw_folder
    expected = ", ".join(f for train in (True, False) for f in spec.files(train))
    dataset_class = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        for filename, md5 in dataset_class.resources:
            errors = []
            for mirror in dataset_class.mirrors:
                try:
                    download_and_extract_archive(
                        f"{mirror}{filename}", download_root=folder, filename=filename, md5=md5
                    )
                    break
                except Exception as err:  # network, HTTP, checksum: try the next mirror
                    errors.append(err)
            else:
                raise errors[-1]
    except Exception as err:  # network, HTTP, disk: torchvision raises many kinds
        reason = (str(err).strip().splitlines() or [""])[0]
        raise DataError(
            f"{spec.name} is not in {folder} and could not be downloaded ({type(err).__name__}: "
            f"{reason}). Put {expected} there, or point --data-dir / CNNLAB_DATA at a folder "
            f"holding {spec.raw_folder}/"
        ) from None


@dataclass
class RawDataset:
    train: Split
    test: Split
    files: tuple[FileIdentity, ...]  # what was read: official files or a custom copy


def ensure_present(spec: DatasetSpec, root: Path, allow_download: bool = True) -> None:
    """Download the dataset through torchvision unless all its files are under `root`."""
    if not is_present(spec, root):
        if not allow_download:
            raise DataError(f"{spec.name} is not in {root / spec.raw_folder}")
        download(spec, root)


def read_split(spec: DatasetSpec, root: Path, train: bool) -> tuple[Split, list[FileIdentity]]:
    """One split, validated: the IDX format, the shapes, and the files' identity."""
    folder = root / spec.raw_folder
    images_name, labels_name = spec.files(train)
    identities, tensors = [], []
    for name in (images_name, labels_name):
        path = raw_path(folder, name) or folder / name
        if not path.exists() and not path.is_symlink():
            raise DataError(f"{folder / name}: file not found")
        raw = read_raw(path)
        identities.append(identify(spec.name, name, raw, str(path)))
        tensors.append(parse_idx(raw, str(path)))
    images, labels = check_idx_pair(
        tensors[0], tensors[1], folder / images_name, folder / labels_name, spec.num_classes
    )
    if tuple(images.shape[1:]) != spec.shape[1:]:
        raise DataError(
            f"{folder / images_name}: images are {tuple(images.shape[1:])}, "
            f"{spec.name} needs {spec.shape[1:]}"
        )
    return Split(images.unsqueeze(1), labels), identities  # (N, 1, H, W)


def read_dataset(spec: DatasetSpec, root: Path, allow_download: bool = True) -> RawDataset:
    """Both splits and the identity of their files, downloading when the files are missing.

    The identity is that of IDX files (MNIST-like datasets); CIFAR-10 and folders have none here.
    """
    if spec.kind == "cifar10":
        return RawDataset(*load_cifar10_splits(spec, root, allow_download), ())
    if spec.kind == "folder":
        from cnnlab.data.folder_splits import load_folder

        folder = load_folder(spec.folder)
        train = Split(folder.train.images, folder.train.labels)
        return RawDataset(train, Split(folder.test.images, folder.test.labels), ())
    ensure_present(spec, root, allow_download)
    train, train_files = read_split(spec, root, train=True)
    test, test_files = read_split(spec, root, train=False)
    return RawDataset(train, test, tuple(train_files + test_files))


def load_split(spec: DatasetSpec, root: Path, train: bool, allow_download: bool = True) -> Split:
    """The training (`train`) or test split, validated; downloaded first if files are missing."""
    ensure_present(spec, root, allow_download)
    return read_split(spec, root, train)[0]


def load_dataset(spec: DatasetSpec, root: Path, allow_download: bool = True):
    """Return `(train, test)` splits, downloading through torchvision if the files are missing.

    CIFAR-10 is read by `cnnlab.data.cifar`; a folder dataset (a spec from
    `cnnlab.data.folder_splits`) is read from its folder with its options, and its splits may be
    memory-mapped.
    """
    data = read_dataset(spec, root, allow_download)
    return data.train, data.test


def load_cifar10_splits(spec: DatasetSpec, root: Path, allow_download: bool = True):
    """CIFAR-10's `(train, test)`; its batches.meta.txt must name the classes the spec does."""
    from cnnlab.data.cifar import FOLDER, META_FILE, load_cifar10

    data = load_cifar10(root, allow_download)
    if data.classes != spec.classes:
        raise DataError(
            f"{root / FOLDER / META_FILE}: names the classes {', '.join(data.classes)}; "
            f"CIFAR-10's are {', '.join(spec.classes)}"
        )
    return Split(data.train_images, data.train_labels), Split(data.test_images, data.test_labels)
