"""The device-resident loader: a batch is an index slice of a seeded permutation.

Images are read once into uint8 tensors and kept on the training device; a batch is scaled by
`cnnlab.data.preprocess.to_model_input`. No DataLoader workers, no per-sample PIL conversion.
A memory-mapped split (a folder dataset above its memory budget) stays on disk: each batch's rows
are gathered from it and moved to the device. With an `AugmentConfig`, each uint8 batch is
augmented on the device before scaling, by a generator seeded with `(seed, epoch)`.

With `shard`, the loader is one of several data-parallel processes: every process walks the same
permutation in the same global batches and keeps its own part of each batch, so the union of the
parts over the processes is exactly the single-process epoch (`shard_range` states the rule). An
augmented batch draws its random parameters for the whole global batch and applies this process's
part of them, so its images are augmented exactly as in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cnnlab.data.preprocess import Normalization, to_model_input
from cnnlab.data.splits import Split

if TYPE_CHECKING:
    from cnnlab.data.augment import AugmentConfig

AUGMENT_STREAM = 7_919  # keeps the augmentation's seeds apart from the shuffling's


@dataclass(frozen=True)
class Shard:
    """Process `rank` of `world_size` data-parallel processes."""

    rank: int
    world_size: int


def shard_range(start: int, stop: int, shard: Shard) -> tuple[int, int]:
    """The part `[lo, hi)` of the batch at positions `[start, stop)` that `shard` takes.

    The batch is cut into `world_size` contiguous parts, in rank order, whose sizes differ by at
    most one: with L = stop - start, the first L % world_size ranks take one image more. A full
    batch (L = the global batch size, which the processes divide) gives every rank the same
    number; only a last batch that does not divide evenly gives unequal parts, and one with
    fewer images than processes leaves the last ranks with none (`DeviceLoader.mean_over` keeps
    its gradient exact).
    """
    size, extra = divmod(stop - start, shard.world_size)
    lo = start + shard.rank * size + min(shard.rank, extra)
    return lo, lo + size + (1 if shard.rank < extra else 0)


class DeviceLoader:
    """Batches from a device-resident uint8 split: `for x, y in loader.epoch(e)`.

    The order of epoch `e` is `randperm` seeded by `(seed, e)`, and so are its augmentations, so
    they depend on nothing else: a resumed run sees exactly the batches an uninterrupted one would.
    `batch_size` is the global batch; with `shard`, each batch yielded is this process's part of it.
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
        shard: Shard | None = None,
    ):
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.norm = norm
        self.channels_last = channels_last
        self.augment = augment
        self.shard = shard
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
            lo, hi = self.part(start, n)
            idx = slice(lo, hi) if order is None else order[lo:hi]
            x = to_model_input(self.split.images[idx], self.norm, self.channels_last)
            yield x, self.split.labels[idx]  # (B, C, H, W), (B,)

    def gathered_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same batches, for a memory-mapped split and/or with augmentation."""
        from cnnlab.data.augment import apply_params, sample_params

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
            lo, hi = self.part(start, n)
            images, labels = self.rows(slice(lo, hi) if order is None else order[lo:hi])
            if augment_gen is not None:  # drawn for the whole batch, applied to this part
                size = min(start + self.batch_size, n) - start
                params = sample_params(self.augment, size, augment_gen)
                images = apply_params(images, params.rows(lo - start, hi - start), self.augment)
            yield to_model_input(images, self.norm, self.channels_last), labels

    def part(self, start: int, n: int) -> tuple[int, int]:
        """The positions `[lo, hi)` of the batch starting at `start` that this process takes."""
        stop = min(start + self.batch_size, n)
        return (start, stop) if self.shard is None else shard_range(start, stop, self.shard)

    def mean_over(self, step: int) -> float | None:
        """What this process divides its summed loss of batch `step` by; None: its own size.

        DistributedDataParallel averages the processes' gradients. When every part of a batch
        has the same size that average of part means is the batch mean; for a last batch of L
        images that does not divide evenly, each process divides its sum by L / world_size
        instead, so the average is again exactly the gradient of the mean over the L images.
        """
        if self.shard is None:
            return None
        size = min(self.batch_size, len(self.split) - step * self.batch_size)
        if size % self.shard.world_size == 0:
            return None
        return size / self.shard.world_size

    def rows(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels of rows `index`, on the loader's device."""
        if not self.split.mapped:
            return self.split.images[index], self.split.labels[index]
        return self.split.gather(index).to(self.device), self.split.labels[index].to(self.device)
