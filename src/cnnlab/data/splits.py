"""Splits held in memory: uint8 images with their labels, the validation hold-out and subsets.

The images of a folder dataset bigger than its memory budget are a read-only memory-mapped numpy
array instead of a tensor; `Split.gather` reads rows of either kind as a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.data.registry import DatasetSpec
from cnnlab.errors import ConfigError, DataError


@dataclass
class Split:
    """Images as uint8 `(N, C, H, W)` and labels as int64 `(N,)`.

    `images` is a tensor, or (`mapped`) a memory-mapped numpy array that stays on disk: `to`
    leaves it there and `gather` reads the rows a batch needs.
    """

    images: torch.Tensor | np.ndarray
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def mapped(self) -> bool:
        return not isinstance(self.images, torch.Tensor)

    def gather(self, index) -> torch.Tensor:
        """uint8 images of rows `index` (a slice, or indices in any order) as a tensor."""
        if not self.mapped:
            return self.images[index]
        from cnnlab.data.folder_images import gather_batch  # only mapped folder data needs it

        return gather_batch(self.images, index)

    def subset(self, index) -> Split:
        """Rows `index`; a slice of mapped images stays mapped, other indices are read in."""
        if self.mapped and not isinstance(index, slice):
            return Split(self.gather(index), self.labels[index])
        return Split(self.images[index], self.labels[index])

    def to(self, device) -> Split:
        if self.mapped:  # stays on disk; batches are gathered and moved one at a time
            return self
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class DataSplits:
    train: Split
    val: Split | None
    test: Split
    spec: DatasetSpec | None = None  # the dataset they came from, resolved once where a run starts
    files: tuple = ()  # the identity of the files read (cnnlab.data.identity.FileIdentity)
    folder: object = None  # a folder:PATH dataset's FolderDataset (files, skipped files, cache)


def make_splits(
    train: Split,
    test: Split,
    val_size: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    split_seed: int = 0,
    spec: DatasetSpec | None = None,
) -> DataSplits:
    """Hold out `val_size` seeded-random training images, then keep the first `train_subset`.

    A split without images is refused here, before any training step or any output file.
    """
    name = spec.name if spec is not None else "the dataset"
    for which, split in (("training", train), ("test", test)):
        if len(split) == 0:
            raise DataError(f"{name}: the {which} split has no images, so there is nothing to use")
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
    return DataSplits(train=train, val=val, test=test, spec=spec)
