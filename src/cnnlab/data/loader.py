"""The device-resident loader: a batch is an index slice of a seeded permutation.

Images are read once into uint8 tensors and kept on the training device; a batch is scaled by
`cnnlab.data.preprocess.to_model_input`. No DataLoader workers, no per-sample PIL conversion.
A memory-mapped split (a folder dataset above its memory budget) stays on disk: each batch's rows
are gathered from it and moved to the device. With an `AugmentConfig`, each uint8 batch is
augmented on the device before scaling, by a generator seeded with `(seed, epoch)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from cnnlab.data.preprocess import Normalization, to_model_input
from cnnlab.data.splits import Split

if TYPE_CHECKING:
    from cnnlab.data.augment import AugmentConfig

AUGMENT_STREAM = 7_919  # keeps the augmentation's seeds apart from the shuffling's


class DeviceLoader:
    """Batches from a device-resident uint8 split: `for x, y in loader.epoch(e)`.

    The order of epoch `e` is `randperm` seeded by `(seed, e)`, and so are its augmentations, so
    they depend on nothing else: a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        norm: Normalization = Normalization(),
        channels_last: bool = False,
        augment: AugmentConfig | None = None,
        device: torch.device | str | None = None,
    ):
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.norm = norm
        self.channels_last = channels_last
        self.augment = augment
        # where batches go: a resident split's own device; a mapped split's batches are moved
        self.device = torch.device(device) if device is not None else split.labels.device

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.split.mapped or self.augment is not None:
            yield from self.gathered_epoch(epoch)
            return
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

    def gathered_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same batches, for a memory-mapped split and/or with augmentation."""
        from cnnlab.data.augment import augment_batch

        n = len(self.split)
        order = None
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)
            if not self.split.mapped:
                order = order.to(self.split.labels.device)
        augment_gen = None
        if self.augment is not None:
            augment_gen = torch.Generator(device=self.device)
            augment_gen.manual_seed(
                ((self.seed * 1_000_003 + epoch) * AUGMENT_STREAM + 1) % (1 << 63)
            )
        for start in range(0, n, self.batch_size):
            if order is None:
                idx = slice(start, start + self.batch_size)
            else:
                idx = order[start : start + self.batch_size]
            images, labels = self.rows(idx)
            if augment_gen is not None:
                images = augment_batch(images, self.augment, augment_gen)
            yield to_model_input(images, self.norm, self.channels_last), labels

    def rows(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels of rows `index`, on the loader's device."""
        if not self.split.mapped:
            return self.split.images[index], self.split.labels[index]
        return self.split.gather(index).to(self.device), self.split.labels[index].to(self.device)
