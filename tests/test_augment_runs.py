"""Augmentation inside training: seeded batches in the loader, and resume stays exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cnnlab.cli import main
from cnnlab.data.augment import augment_batch, get_augment_preset
from cnnlab.data.loader import AUGMENT_STREAM, DeviceLoader
from cnnlab.data.preprocess import to_model_input
from cnnlab.data.splits import Split
from cnnlab.runfiles import read_metrics
from tests.conftest import strip_timing

pytestmark = pytest.mark.usefixtures("no_run_figures")


def split(n=40, shape=(3, 12, 12), seed=0) -> Split:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    return Split(images, torch.arange(n) % 4)


def batches(loader: DeviceLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.epoch(epoch))


@pytest.mark.parametrize("preset", ["natural", "digits"])
def test_same_seed_and_epoch_give_the_same_batches(preset):
    config = get_augment_preset(preset)
    a = DeviceLoader(split(), 16, True, seed=3, augment=config)
    b = DeviceLoader(split(), 16, True, seed=3, augment=config)
    for (xa, ya), (xb, yb) in zip(batches(a, 1), batches(b, 1)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first, second = batches(a, 0), batches(a, 1)
    assert not all(torch.equal(x0, x1) for (x0, _), (x1, _) in zip(first, second))
    other_seed = DeviceLoader(split(), 16, True, seed=4, augment=config)
    assert not torch.equal(batches(other_seed, 1)[0][0], batches(a, 1)[0][0])


def test_augmented_batches_are_the_plain_batches_augmented_by_the_epoch_generator():
    data, config = split(), get_augment_preset("natural")
    plain = batches(DeviceLoader(data, 16, True, seed=5), 2)
    augmented = batches(DeviceLoader(data, 16, True, seed=5, augment=config), 2)
    gen = torch.Generator().manual_seed((5 * 1_000_003 + 2) * AUGMENT_STREAM + 1)
    for (x, y), (xa, ya) in zip(plain, augmented):
        assert torch.equal(y, ya)  # the same images in the same order
        uint8 = (x * 255).round().to(torch.uint8)
        assert torch.equal(xa, to_model_input(augment_batch(uint8, config, gen)))


def test_memory_mapped_split_gives_the_same_batches(tmp_path):
    data = split()
    mapped = np.lib.format.open_memmap(
        tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=tuple(data.images.shape)
    )
    mapped[:] = data.images.numpy()
    mapped.flush()
    on_disk = Split(np.load(tmp_path / "x.npy", mmap_mode="r"), data.labels)
    assert on_disk.mapped and on_disk.to("cpu") is on_disk
    for augment in (None, get_augment_preset("digits")):
        a = batches(DeviceLoader(data, 16, True, seed=1, augment=augment), 0)
        b = batches(DeviceLoader(on_disk, 16, True, seed=1, augment=augment), 0)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("preset", ["digits", "natural"])
def test_resume_with_augmentation_ends_with_identical_weights(fake_root, tmp_path, preset):
    base = ["--data-dir", str(fake_root), "--quiet", "--threads", "1", "--augment", preset]
    base += ["--train-subset", "256", "--test-subset", "64", "--batch-size", "32"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", "--epochs", "3", "--out", str(straight), *base]) == 0
    assert main(["train", "--epochs", "1", "--out", str(resumed), *base]) == 0
    assert main(["train", "--resume", str(resumed), "--epochs", "3", *base[:3]]) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["loss"] for m in read_metrics(straight)] == [m["loss"] for m in read_metrics(resumed)]
    plain = tmp_path / "plain"
    no_augment = [f for f in base if f != preset and f != "--augment"]
    assert main(["train", "--epochs", "3", "--out", str(plain), *no_augment]) == 0
    assert strip_timing(read_metrics(plain)) != strip_timing(read_metrics(straight))
