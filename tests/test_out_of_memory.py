"""Out-of-memory errors, injected: training suggests a smaller --batch-size; evaluation halves its
own batch and retries, and fails with a line about evaluation only at one image per batch."""

from __future__ import annotations

import pytest
import torch

import cnnlab.predict
import cnnlab.train
from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.data import get_dataset
from cnnlab.data.preprocess import to_model_input
from cnnlab.data.sources import load_dataset
from cnnlab.data.splits import make_splits
from cnnlab.errors import EvaluationError, TrainingError
from cnnlab.models import ModelConfig, create_model
from cnnlab.predict import EvalSettings, Predictor
from cnnlab.runtime import is_out_of_memory, resolve_runtime
from cnnlab.train import fit
from tests.conftest import one_error_line

CPU_OOM = (
    "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes. "
    "Error code 12 (Cannot allocate memory)"
)
ERRORS = {
    "cpu": lambda: RuntimeError(CPU_OOM),
    "cuda": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
    "any": lambda: torch.OutOfMemoryError("out of memory"),
}


def test_what_counts_as_out_of_memory():
    assert all(is_out_of_memory(make()) for make in ERRORS.values())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError(CPU_OOM))


def fail_above(monkeypatch, limit: int, error: str = "cpu") -> list[int]:
    """The predictor's input conversion (its first allocation per batch) fails for batches
    larger than `limit`; returns the batch sizes it was called with."""
    sizes: list[int] = []

    def convert(batch, *args, **kwargs):
        sizes.append(len(batch))
        if len(batch) > limit:
            raise ERRORS[error]()
        return to_model_input(batch, *args, **kwargs)

    monkeypatch.setattr(cnnlab.predict, "to_model_input", convert)
    return sizes


@pytest.mark.parametrize("error", sorted(ERRORS))
def test_predictor_halves_its_batch_and_gives_the_same_logits(monkeypatch, error):
    torch.manual_seed(0)
    model = create_model(ModelConfig("cnn"))
    images = torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8)
    expected = model.eval()(images.float() / 255)
    sizes = fail_above(monkeypatch, 30, error)
    predictor = Predictor(model, EvalSettings(batch_size=100))
    logits = predictor.logits(images)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert sizes == [100, 50, 25, 25, 25, 25]  # halved twice, then whole batches of 25
    assert predictor.batch_size == 25  # and it stays there for the next call
    predictor.logits(images[:60])
    assert sizes[6:] == [25, 25, 10]


def test_predictor_out_of_memory_at_one_image_is_an_evaluation_error(monkeypatch):
    fail_above(monkeypatch, 0)
    predictor = Predictor(create_model(ModelConfig("cnn")), EvalSettings(batch_size=8))
    with pytest.raises(EvaluationError) as info:
        predictor.logits(torch.zeros(8, 1, 28, 28, dtype=torch.uint8))
    message = str(info.value)
    assert "out of memory on cpu predicting even one image at a time" in message
    assert "evaluation batch started at 8" in message and "--batch-size" not in message


def test_other_errors_are_not_taken_for_out_of_memory(monkeypatch):
    def convert(batch, *args, **kwargs):
        raise RuntimeError("expected scalar type Float but found Half")

    monkeypatch.setattr(cnnlab.predict, "to_model_input", convert)
    with pytest.raises(RuntimeError, match="expected scalar type"):
        Predictor(create_model(ModelConfig("cnn"))).logits(torch.zeros(4, 1, 28, 28).byte())


@pytest.fixture
def splits(fake_root):
    train, test = load_dataset(get_dataset("mnist"), fake_root)
    return make_splits(train, test, train_subset=128, test_subset=100)


def test_fit_evaluates_through_out_of_memory(splits, monkeypatch):
    """An evaluation that runs out of memory above 40 images gives the same test figures."""
    runtime = resolve_runtime("cpu", "fp32", threads=1)
    config = TrainConfig(epochs=1)
    plain = fit(config, splits, runtime, log=lambda _: None)
    sizes = fail_above(monkeypatch, 40)
    halved = fit(config, splits, runtime, log=lambda _: None)
    assert sizes == [100, 50, 25, 25, 25, 25]  # the 100 test images: batch 1000 holds them all
    assert halved.test_accuracy == plain.test_accuracy
    assert halved.test_loss == pytest.approx(plain.test_loss, rel=1e-5)


@pytest.mark.parametrize("error", sorted(ERRORS))
def test_training_out_of_memory_suggests_a_smaller_training_batch(splits, monkeypatch, error):
    def step(*args, **kwargs):
        raise ERRORS[error]()

    monkeypatch.setattr(cnnlab.train, "train_step", step)
    with pytest.raises(TrainingError) as info:
        fit(TrainConfig(batch_size=64), splits, resolve_runtime("cpu"), log=lambda _: None)
    assert str(info.value).startswith("out of memory on cpu at batch size 64; ")
    assert "try a smaller --batch-size, such as 32" in str(info.value)


def test_training_errors_that_are_not_out_of_memory_pass_unchanged(splits, monkeypatch):
    def step(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x3136 and 3137x10)")

    monkeypatch.setattr(cnnlab.train, "train_step", step)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        fit(TrainConfig(), splits, resolve_runtime("cpu"), log=lambda _: None)


def test_eval_command_out_of_memory_is_one_line_about_evaluation(
    fake_root, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_root), "--out", str(run), "--epochs", "1"]
    argv += ["--train-subset", "64", "--test-subset", "32", "--quiet", "--threads", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    fail_above(monkeypatch, 0)
    assert main(["eval", str(run), "--data-dir", str(fake_root)]) == 1
    line = one_error_line(capsys)
    assert "out of memory on cpu predicting even one image at a time" in line
    assert "--batch-size" not in line


def test_train_command_evaluation_out_of_memory_says_what_was_saved(
    fake_root, tmp_path, capsys, monkeypatch
):
    fail_above(monkeypatch, 0)
    run = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_root), "--out", str(run), "--epochs", "1"]
    argv += ["--train-subset", "64", "--test-subset", "32", "--quiet", "--threads", "1"]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert "predicting even one image at a time" in line
    assert line.endswith("No epoch was completed, so nothing was saved.")
