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
from tests.conftest import write_fake_dataset


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


@pytest.mark.parametrize("name", list_datasets())
def test_registered_dataset_is_consistent(name):
    spec = get_dataset(name)
    assert spec.name == name
    assert len(spec.shape) == 3 and all(d >= 1 for d in spec.shape)
    assert spec.num_classes == len(spec.classes) == len(set(spec.classes)) >= 2
    means = spec.mean if isinstance(spec.mean, tuple) else (spec.mean,)
    stds = spec.std if isinstance(spec.std, tuple) else (spec.std,)
    assert len(means) == len(stds) in (1, spec.shape[0])
    assert all(0 < m < 1 for m in means) and all(0 < s < 1 for s in stds)
    if spec.kind == "idx":
        files = [f for train in (True, False) for f in spec.files(train)]
        assert len(set(files)) == 4
    norm = spec.normalization(True)
    assert (norm.mean, norm.std) == (spec.mean, spec.std)
    assert spec.normalization(False) == Normalization()


@pytest.mark.parametrize("name", list_datasets())
def test_synthetic_files_load_like_the_real_layout(tmp_path, name):
    spec = get_dataset(name)
    root = write_fake_dataset(tmp_path / "data", name)
    assert is_present(spec, root)
    train, test = load_dataset(spec, root, allow_download=False)
    assert train.images.shape == (600, *spec.shape) and train.images.dtype == torch.uint8
    assert test.images.shape == (200, *spec.shape)
    assert test.labels.shape == (200,) and test.labels.dtype == torch.int64
    assert int(train.labels.max()) < spec.num_classes


@pytest.mark.parametrize("name", list_datasets())
def test_real_data_matches_torchvision(data_root, name):
    """Our reader against torchvision's own dataset class on the same files."""
    import torchvision.datasets

    spec = get_dataset(name)
    if not is_present(spec, data_root):
        pytest.skip(f"{name} is not in {data_root / spec.raw_folder}")
    train, test = load_dataset(spec, data_root, allow_download=False)
    assert (len(train), len(test)) == (spec.train_size, spec.test_size)
    torchvision_class = getattr(torchvision.datasets, spec.torchvision_class)
    for ours, is_train in ((train, True), (test, False)):
        reference = torchvision_class(root=str(data_root), train=is_train, download=False)
        assert torch.equal(ours.images[:, 0], reference.data)
        assert torch.equal(ours.labels, reference.targets)
        assert len(reference.classes) == spec.num_classes


def test_real_mnist_class_counts(data_root):
    train, _ = load_dataset(get_dataset("mnist"), data_root, allow_download=False)
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
