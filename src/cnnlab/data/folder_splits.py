"""`folder:PATH` datasets in runs: read the folder once, build its spec, hand out its splits.

    >>> splits = folder_splits(FolderOptions("photos"), log=print)
    >>> splits.spec.classes, splits.spec.shape
    (('cat', 'dog'), (3, 32, 32))

The folder is decoded (or found in the cache) by `cnnlab.data.folder.load_image_folder` with the
run's `FolderOptions`; the spec takes the class names from the folder names, the shape from the
images (or the options), and the per-channel mean and std of the training split. A run records
which file went to which split (`ASSIGNMENT_FILE`) and the files it skipped (`SKIPPED_FILE`);
reloading the run checks that the folder still splits the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cnnlab.data.folder import FolderDataset, FolderSplit, load_image_folder
from cnnlab.data.folder_cache import folder_cache_dir
from cnnlab.data.registry import DatasetSpec, FolderOptions
from cnnlab.data.splits import DataSplits, Split
from cnnlab.errors import DataError
from cnnlab.files import atomic_write_text

ASSIGNMENT_FILE = "splits.json"
SKIPPED_FILE = "skipped.txt"
MB = 1 << 20


def load_folder(options: FolderOptions, progress: bool | None = None) -> FolderDataset:
    """Decode the folder (or read its cache entry) with the given options."""
    return load_image_folder(
        options.path,
        image_size=options.image_size,
        channels=options.channels,
        fit=options.fit,
        test_fraction=options.test_fraction,
        val_size=options.val_size,
        seed=options.split_seed,
        strict=options.strict,
        cache_dir=folder_cache_dir(),
        memory_budget_bytes=options.memory_budget_mb * MB,
        progress=progress,
    )


def spec_of(data: FolderDataset, options: FolderOptions) -> DatasetSpec:
    """The dataset spec of a decoded folder: classes, shape, sizes and statistics from it."""
    path = str(data.root.resolve())
    return DatasetSpec(
        name=f"folder:{path}",
        torchvision_class="",
        shape=data.shape,
        classes=data.classes,
        train_size=len(data.train),
        test_size=len(data.test),
        mean=data.mean,
        std=data.std,
        description=f"image folder {path}",
        kind="folder",
        folder=FolderOptions(**(options.to_json() | {"path": path})),
    )


def as_split(split: FolderSplit) -> Split:
    return Split(split.images, split.labels)


def spread(count: int, limit: int | None) -> slice | torch.Tensor:
    """The rows a `--train-subset`/`--test-subset` of `limit` takes: spread evenly over the
    split (a folder's files come in class order, so the first N would be one or two classes)."""
    if limit is None or limit >= count:
        return slice(None)
    return torch.arange(limit, dtype=torch.int64) * count // limit


def folder_splits(
    options: FolderOptions,
    train_subset: int | None = None,
    test_subset: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> DataSplits:
    """Read the folder and return its splits, with the spec and the `FolderDataset` attached."""
    started = time.perf_counter()
    data = load_folder(options, progress)
    seconds = time.perf_counter() - started
    if log is not None:
        for line in describe(data, options, seconds):
            log(line)
    train, test = as_split(data.train), as_split(data.test)
    train = train.subset(spread(len(train), train_subset))
    test = test.subset(spread(len(test), test_subset))
    val = as_split(data.val) if data.val is not None else None
    return DataSplits(train=train, val=val, test=test, spec=spec_of(data, options), folder=data)


def describe(data: FolderDataset, options: FolderOptions, seconds: float) -> list[str]:
    """What the run reads: classes, shape, split sizes, and where the decoded images came from."""
    shape = "x".join(map(str, data.shape))
    names = ", ".join(data.classes[:6]) + (", ..." if data.num_classes > 6 else "")
    sizes = [f"train {len(data.train):,}"]
    sizes += [f"val {len(data.val):,}"] if data.val is not None else []
    sizes += [f"test {len(data.test):,}"]
    held = [f"{options.test_fraction:.0%} of each class held out for test"] * (
        "test" in data.held_out
    )
    held += [f"{options.val_size:,} held out for val"] * ("val" in data.held_out)
    held_text = f" ({', '.join(held)}; seed {options.split_seed})" if held else ""
    lines = [
        f"Folder {data.root}: {data.num_classes} classes ({names}), {shape}, "
        f"{', '.join(sizes)}{held_text}"
    ]
    total = sum(len(s) for s in (data.train, data.val, data.test) if s is not None)
    where = data.cache_paths[1].parent if data.cache_paths else "memory"
    if data.cache_hit:
        lines.append(f"Decoded images: cache hit, read from {where} in {seconds:.1f}s")
    else:
        rate = total / seconds if seconds > 0 else float("inf")
        lines.append(
            f"Decoded {total:,} images in {seconds:.1f}s ({rate:,.0f} images/s); cached in {where}"
        )
    if data.mmapped:
        lines.append(
            f"Memory-mapped: the decoded images exceed --memory-budget {options.memory_budget_mb} "
            f"MB, so batches are read from the cache files"
        )
    return lines


def dataset_json(splits: DataSplits) -> dict:
    """config.json's "dataset" section of a folder run (the file lists go to `ASSIGNMENT_FILE`)."""
    data: FolderDataset = splits.folder
    return splits.spec.to_json() | {
        "layout": data.layout,
        "held_out": list(data.held_out),
        "split_sizes": {name: len(files) for name, files in data.assignment().items()},
        "assignment": ASSIGNMENT_FILE,
        "skipped": len(data.skipped),
    }


def write_folder_files(
    run_dir: Path, splits: DataSplits, log: Callable[[str], None], final_dir: Path | None = None
) -> None:
    """Write the file assignment and the skipped files into `run_dir` (a staging folder, moved
    to `final_dir` with the first epoch); one line says how many were skipped."""
    data: FolderDataset = splits.folder
    assignment = {name: list(files) for name, files in data.assignment().items()}
    atomic_write_text(run_dir / ASSIGNMENT_FILE, json.dumps(assignment, indent=0) + "\n")
    atomic_write_text(run_dir / SKIPPED_FILE, data.skipped_text())
    if data.skipped:
        log(
            f"Skipped {len(data.skipped)} image file(s) that cannot be read; listed in "
            f"{(final_dir or run_dir) / SKIPPED_FILE}"
        )


def check_assignment(run_dir: Path, splits: DataSplits) -> None:
    """The folder must split as it did when the run was trained (no file added, removed or
    moved), or the run's numbers would be about other images: a `DataError` otherwise."""
    path = Path(run_dir) / ASSIGNMENT_FILE
    if not path.exists():
        raise DataError(f"{run_dir}: no {ASSIGNMENT_FILE} (the file list of a folder run)")
    try:
        recorded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not readable JSON ({err})") from None
    now = {name: list(files) for name, files in splits.folder.assignment().items()}
    if recorded == now:
        return
    for name in sorted(set(recorded) | set(now)):
        before, after = set(recorded.get(name, [])), set(now.get(name, []))
        if before != after:
            gone, new = sorted(before - after), sorted(after - before)
            example = (gone or new)[0]
            raise DataError(
                f"{splits.folder.root} has changed since the run was trained: its {name} split "
                f"lost {len(gone)} and gained {len(new)} file(s) (e.g. {example}); the run's "
                f"split is in {path}"
            )
    raise DataError(f"{splits.folder.root}: the files are in another order than in {path}")
