"""Training: reproducibility, schedules, save -> load, and a short real-data run."""

from __future__ import annotations

import math

import pytest
import torch

from cnnlab.config import TrainConfig
from cnnlab.data import get_dataset
from cnnlab.data.sources import load_dataset
from cnnlab.data.splits import make_splits
from cnnlab.errors import ConfigError
from cnnlab.predict import EvalSettings, predict_logits
from cnnlab.run import load_splits, train_run
from cnnlab.runfiles import load_run
from cnnlab.runtime import resolve_runtime
from cnnlab.train import fit, lr_at
from tests.conftest import strip_timing


@pytest.fixture
def fake_splits(fake_root):
    train, test = load_dataset(get_dataset("mnist"), fake_root)
    return make_splits(train, test, val_size=100)


def test_tutorial_recipe_is_the_default():
    config = TrainConfig()
    assert (config.model, config.dataset, config.optimizer) == ("cnn", "mnist", "adam")
    assert (config.lr, config.batch_size, config.epochs, config.schedule) == (
        1e-3,
        64,
        5,
        "constant",
    )


def test_same_seed_same_numbers(fake_splits):
    runtime = resolve_runtime("cpu", "auto")
    config = TrainConfig(epochs=2, seed=7)
    a = fit(config, fake_splits, runtime, log=lambda _: None)
    b = fit(config, fake_splits, runtime, log=lambda _: None)
    assert strip_timing(a.metrics) == strip_timing(b.metrics)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    c = fit(TrainConfig(epochs=2, seed=8), fake_splits, runtime, log=lambda _: None)
    assert strip_timing(c.metrics) != strip_timing(a.metrics)


def test_training_learns_the_synthetic_task(fake_splits):
    result = fit(TrainConfig(epochs=3), fake_splits, resolve_runtime("cpu"), log=lambda _: None)
    losses = [m["loss"] for m in result.metrics]
    assert losses[-1] < losses[0]
    assert result.test_accuracy > 0.9  # ten well-separated squares


def test_save_load_gives_identical_predictions(fake_root, tmp_path):
    runtime = resolve_runtime("cpu", "fp32")
    config = TrainConfig(epochs=1, normalize=True)
    result = train_run(config, runtime, fake_root, tmp_path / "run", log=lambda _: None)
    loaded = load_run(tmp_path / "run")
    images = load_splits(config, fake_root).test.images
    norm = get_dataset("mnist").normalization(True)
    expected = predict_logits(result.model, images, EvalSettings(norm=norm))
    assert torch.equal(predict_logits(loaded.model, images, EvalSettings(norm=norm)), expected)
    for name in ("model.safetensors", "checkpoint.safetensors"):
        from_file = load_run(tmp_path / "run" / name)
        assert torch.equal(
            predict_logits(from_file.model, images, EvalSettings(norm=norm)), expected
        )
    plain = predict_logits(
        load_run(tmp_path / "run").model, images, EvalSettings(norm=norm)
    )  # default layout
    assert torch.allclose(plain, expected, atol=1e-4)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_schedules(schedule):
    total = 1000
    lrs = [lr_at(s, total, 0.01, schedule) for s in range(total)]
    assert max(lrs) == pytest.approx(0.01, rel=1e-3)
    assert all(lr > 0 for lr in lrs)
    if schedule == "constant":
        assert set(lrs) == {0.01}
    else:
        assert lrs[-1] < 0.0002
    if schedule == "onecycle":
        peak = lrs.index(max(lrs))
        assert 240 <= peak <= 260 and lrs[0] == pytest.approx(0.0004)
    if schedule == "cosine":
        assert lrs[500] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 500 / 1000)))


def test_config_round_trips_and_rejects_bad_values():
    config = TrainConfig(model="mlp", model_options={"hidden": 64}, epochs=2, lr=0.01)
    assert TrainConfig.from_json(config.to_json()) == config
    assert TrainConfig.from_json(config.to_json(), epochs=9).epochs == 9
    with pytest.raises(
        ConfigError, match="unknown optimizer 'rmsprop'; choose from adam, adamw, sgd"
    ):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="--epochs must be at least 1"):
        TrainConfig(epochs=-1)
    with pytest.raises(ConfigError, match="unknown training settings in config: colour"):
        TrainConfig.from_json({"colour": "red"})


def test_short_real_mnist_run(data_root):
    """6,000 MNIST images, 1 epoch, seed 0: measured 0.945 on 2,000 test images (2-core CPU,
    bf16 auto); seeds 1 and 2 gave 0.9485 and 0.9515. The bar sits just under that."""
    config = TrainConfig(epochs=1, train_subset=6000, test_subset=2000)
    result = fit(config, load_splits(config, data_root), resolve_runtime("cpu"), log=lambda _: None)
    assert result.test_accuracy >= 0.93
