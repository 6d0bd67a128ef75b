"""The model shipped inside the package: it loads with no data root, scores what it recorded on
the packaged MNIST test set, and reads digits saved the way people save them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from cnnlab.bundled import BUNDLED_RUN, bundled_run_dir
from cnnlab.cli import main
from cnnlab.data import get_dataset
from cnnlab.data.sources import PACKAGED_ROOT, load_dataset
from cnnlab.metrics import evaluate_run
from cnnlab.runfiles import load_run, read_metrics
from cnnlab.runtime import resolve_runtime

pytestmark = pytest.mark.skipif(
    not (BUNDLED_RUN / "model.safetensors").is_file(), reason="this tree ships no bundled model"
)


@pytest.fixture
def no_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


def test_it_is_the_tutorials_cnn_and_scores_what_it_recorded(no_data_root):
    run = load_run(bundled_run_dir())
    assert run.model_config.name == "cnn" and run.config["dataset"]["name"] == "mnist"
    assert sum(p.numel() for p in run.model.parameters()) == 50_378
    recorded = read_metrics(bundled_run_dir())[-1]["test_accuracy"]
    assert recorded >= 0.990
    _, test = load_dataset(get_dataset("mnist"), PACKAGED_ROOT, allow_download=False)
    report = evaluate_run(run, test, resolve_runtime("cpu", "auto"))
    # another CPU may round a handful of borderline images differently
    assert abs(report.accuracy - recorded) <= 0.0005


def test_predict_without_run_reads_a_digit_saved_three_ways(no_data_root, tmp_path, capsys):
    _, test = load_dataset(get_dataset("mnist"), PACKAGED_ROOT, allow_download=False)
    paths = []
    for i in range(10):
        digit = Image.fromarray(test.images[i, 0].numpy())
        digit.save(tmp_path / f"{i}-plain.png")
        big = ImageOps.invert(digit).resize((300, 300), Image.Resampling.BICUBIC)
        big.save(tmp_path / f"{i}-inverted-300.jpg", quality=90)
        paths += [tmp_path / f"{i}-plain.png", tmp_path / f"{i}-inverted-300.jpg"]
    assert main(["predict", "--json", *map(str, paths)]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    labels = {r["file"]: r["label"] for r in results}
    for i in range(10):
        truth = str(int(test.labels[i]))
        assert labels[str(tmp_path / f"{i}-plain.png")] == truth
        assert labels[str(tmp_path / f"{i}-inverted-300.jpg")] == truth


def test_the_config_records_how_it_was_made():
    config = json.loads((bundled_run_dir() / "config.json").read_text())
    assert config["train"]["augment"] == "digits" and config["data"]["official"] is True
    assert np.isfinite(read_metrics(bundled_run_dir())[-1]["test_loss"])
