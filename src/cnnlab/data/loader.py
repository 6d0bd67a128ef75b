"""The device-resident loader: a batch is an index slice of a seeded permutation.

Images are read once into uint8 tensors and kept on the training device; a batch is scaled by
`cnnlab.data.preprocess.to_model_input`. No DataLoader workers, no per-sample PIL conversion.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cnnlab.data.preprocess import Normalization, to_model_input
from cnnlab.data.splits import Split


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
