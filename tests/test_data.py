"""Dataset registry, data-root resolution, splits and the device-resident loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import get_dataset, list_datasets
from cnnlab.data.loader import DeviceLoader
from cnnlab.data.preprocess import Normalization, to_model_input
from cnnlab.data.sources import is_present, load_dataset, resolve_data_root
from cnnlab.data.splits import Split, make_splits
from cnnlab.errors import ConfigError


def test_registry_has_mnist_and_fashion_mnist():
    assert {"mnist", "fashion-mnist"} <= set(list_datasets())
    assert get_dataset("fashion-mnist").classes[9] == "Ankle boot"
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'.*fashion-mnist, mnist"):
        get_dataset("cifar")


def test_data_root_order(tmp_path):
    env = {"CNNLAB_DATA": "/env/data", "XDG_CACHE_HOME": "/xdg"}
    assert resolve_data_root("/flag", env) == Path("/flag")
    assert resolve_data_root(None, env) == Path("/env/data")
    assert resolve_data_root(None, {"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/cnnlab")
    assert resolve_data_root(None, {}) == Path.home() / ".cache" / "cnnlab"


def test_synthetic_files_load_like_the_real_layout(fake_root):
    spec = get_dataset("mnist")
    assert is_present(spec, fake_root)
    train, test = load_dataset(spec, fake_root)
    assert train.images.shape == (600, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.shape == (200,) and test.labels.dtype == torch.int64


def test_real_mnist_matches_torchvision(data_root):
    """Our reader against torchvision's own MNIST class on the same files."""
    from torchvision.datasets import MNIST

    train, test = load_dataset(get_dataset("mnist"), data_root, allow_download=False)
    reference = MNIST(root=str(data_root), train=False, download=False)
    assert torch.equal(test.images[:, 0], reference.data)
    assert torch.equal(test.labels, reference.targets)
    counts = torch.bincount(train.labels).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_scaling_matches_to_tensor():
    from torchvision.transforms.functional import to_tensor

    image = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    ours = to_model_input(torch.from_numpy(image)[None, None])[0]
    assert torch.allclose(ours, to_tensor(image), atol=0, rtol=0)
    norm = to_model_input(torch.from_numpy(image)[None, None], Normalization(0.5, 0.25))[0]
    assert torch.allclose(norm, (to_tensor(image) - 0.5) / 0.25, atol=1e-6)


def make_split(n=100):
    return Split(torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1), torch.arange(n) % 10)


def test_validation_hold_out_is_disjoint_and_seeded():
    splits = make_splits(make_split(), make_split(20), val_size=30, split_seed=0)
    train_ids = set(splits.train.images.flatten().tolist())
    val_ids = set(splits.val.images.flatten().tolist())
    assert len(train_ids) == 70 and len(val_ids) == 30 and not train_ids & val_ids
    again = make_splits(make_split(), make_split(20), val_size=30, split_seed=0)
    assert torch.equal(again.val.images, splits.val.images)


def test_subsets_take_the_first_images():
    splits = make_splits(make_split(), make_split(20), train_subset=10, test_subset=5)
    assert splits.train.images.flatten().tolist() == list(range(10))
    assert len(splits.test) == 5


def test_val_size_must_leave_training_images():
    with pytest.raises(ConfigError, match="--val-size 100 .* 100 images"):
        make_splits(make_split(), make_split(20), val_size=100)


def test_loader_epochs_are_seeded_permutations():
    loader = DeviceLoader(make_split(), batch_size=32, shuffle=True, seed=5)
    assert len(loader) == 4
    first = torch.cat([x.flatten() for x, _ in loader.epoch(0)])
    assert sorted((first * 255).round().long().tolist()) == list(range(100))
    assert torch.equal(first, torch.cat([x.flatten() for x, _ in loader.epoch(0)]))
    assert not torch.equal(first, torch.cat([x.flatten() for x, _ in loader.epoch(1)]))
    labels = torch.cat([y for _, y in loader.epoch(0)])
    assert torch.equal(labels, ((first * 255).round().long() % 10))
