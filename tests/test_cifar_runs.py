"""`cnnlab train --dataset cifar10` on small synthetic files in the official binary format."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch
import torchvision.datasets.utils

from cnnlab.cli import main
from cnnlab.data import get_dataset
from cnnlab.data.cifar import FOLDER
from cnnlab.data.preprocess import Normalization, to_model_input
from cnnlab.data.sources import is_present, load_dataset
from tests.conftest import one_error_line
from tests.test_data_cifar import CLASSES, write_cifar

FAST = ["--epochs", "1", "--batch-size", "16", "--quiet", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("no_run_figures")


def test_registry_spec_of_cifar10():
    spec = get_dataset("cifar10")
    assert (spec.shape, spec.num_classes, spec.train_size, spec.test_size) == (
        (3, 32, 32),
        10,
        50_000,
        10_000,
    )
    assert spec.classes == tuple(CLASSES) and spec.raw_folder == FOLDER
    assert len(spec.mean) == len(spec.std) == 3


def test_load_dataset_reads_the_binary_files(tmp_path):
    held = write_cifar(tmp_path, n=4)
    spec = get_dataset("cifar10")
    assert is_present(spec, tmp_path)
    train, test = load_dataset(spec, tmp_path, allow_download=False)
    assert train.images.shape == (20, 3, 32, 32) and len(test) == 4
    assert torch.equal(test.images, torch.from_numpy(held["test_batch.bin"][0]))


def test_train_and_eval_cifar10_with_per_channel_normalization(tmp_path, capsys):
    write_cifar(tmp_path / "data", n=8)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), *FAST]
    assert main([*argv, "--normalize", "--model", "resnet", "--out", str(run)]) == 0
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["dataset"]["classes"] == CLASSES and recorded["dataset"]["shape"] == [3, 32, 32]
    assert recorded["normalization"]["mean"] == [0.4914, 0.4822, 0.4465]
    assert recorded["model"]["input_shape"] == [3, 32, 32]
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "of 8 images" in out and "\nairplane" in out and "\ntruck" in out


def test_meta_file_with_other_class_names_is_one_line(tmp_path, capsys):
    write_cifar(tmp_path / "data")
    meta = tmp_path / "data" / FOLDER / "batches.meta.txt"
    meta.write_text("\n".join(f"class{i}" for i in range(10)))
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), *FAST]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys)
    assert f"{meta}: names the classes class0" in line and "CIFAR-10's are airplane" in line
    assert not (tmp_path / "run").exists()


def test_missing_cifar10_offline_names_the_folder_and_files(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"), *FAST]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys)
    assert f"cifar10 is not in {tmp_path / 'empty' / FOLDER} and could not be downloaded" in line
    assert "data_batch_1.bin" in line and "test_batch.bin" in line and "batches.meta.txt" in line


def test_per_channel_normalization_matches_the_formula():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    got = to_model_input(images, Normalization(mean, std))
    for c in range(3):
        expected = (images[:, c].double() / 255 - mean[c]) / std[c]
        assert torch.allclose(got[:, c].double(), expected, atol=1e-6)
    scalar = to_model_input(images, Normalization(0.1307, 0.3081))
    assert torch.equal(scalar, images.float().div(255).sub(0.1307).div(0.3081))


def test_normalization_round_trips_through_json():
    for norm in (Normalization(), Normalization(0.5, 0.25), Normalization((0.1, 0.2), (0.3, 0.4))):
        assert Normalization.from_json(json.loads(json.dumps(norm.to_json()))) == norm


def test_summary_of_the_tutorial_cnn_on_colour_32x32(capsys):
    assert main(["summary", "--model", "cnn", "--input", "3x32x32"]) == 0
    out = capsys.readouterr().out
    # conv1 3*32*9+32, bn1 64, conv2 32*64*9+64, bn2 128, fc 64*8*8*10+10
    assert "fc         Linear       (1, 4096)        (1, 10)              40,970" in out
    assert "Parameters: 60,554" in out
    assert "32x32 -> 16x16 -> 8x8 -> flatten to 4096 (input of fc)" in out


def test_resnet_and_cnn_counts_follow_the_dataset(capsys):
    assert main(["models", "--dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "cifar10 input (3x32x32, 10 classes)" in out and "60,554" in out


def test_datasets_lists_cifar10_and_explains_folders(tmp_path, capsys):
    write_cifar(tmp_path)
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("cifar10"))
    assert "3x32x32" in row and "50,000" in row and " --data-dir " in row
    assert "--dataset folder:PATH" in out
