"""`cnnlab predict` and cnnlab.predict: files in, one result per file out, bad files reported.

The default tests use a run folder holding a randomly initialised model (written with the
project's own save functions): predictions are then checked against the model run directly in
PyTorch on the preprocessed image. The real-data test trains a small model on MNIST.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cnnlab import bundled
from cnnlab.checkpoint import save_weights
from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.data import get_dataset
from cnnlab.data.sources import load_split
from cnnlab.errors import CheckpointError
from cnnlab.files import write_json
from cnnlab.images import mnist_style, open_image, plain_resize
from cnnlab.models import create_model
from cnnlab.predict import (
    IMAGE_SUFFIXES,
    Prediction,
    collect_files,
    predict_files,
    preprocessing_for,
    run_classifier,
    softmax,
)
from cnnlab.run import run_config_json
from cnnlab.runfiles import load_run
from cnnlab.runtime import Runtime
from cnnlab.viz.predict import MAX_SHOWN, predictions_figure

CPU = Runtime(torch.device("cpu"), "fp32", False, 1)
PNG = b"\x89PNG\r\n\x1a\n"


def write_random_run(run_dir: Path, dataset: str = "mnist", model: str = "cnn") -> Path:
    """A run folder with a randomly initialised model, as `cnnlab train` lays it out."""
    config = TrainConfig(model=model, dataset=dataset, epochs=1)
    run_dir.mkdir(parents=True)
    write_json(run_dir / "config.json", run_config_json(config, CPU, Path("unused")))
    torch.manual_seed(0)
    save_weights(run_dir, create_model(config.model_config()))
    return run_dir


@pytest.fixture(scope="session")
def random_run(tmp_path_factory) -> Path:
    return write_random_run(tmp_path_factory.mktemp("runs") / "mnist-cnn")


def digit_image(digit: int, size=(90, 70), dark_on_light=True) -> Image.Image:
    """A digit drawn as strokes, so that the images of different digits differ."""
    canvas = Image.new("L", (size[1], size[0]), 0)
    draw = ImageDraw.Draw(canvas)
    h, w = size
    draw.ellipse((w * 0.2, h * 0.15, w * 0.8, h * 0.85), outline=255, width=4 + digit)
    draw.line((w * 0.5, h * 0.1, w * (0.2 + 0.06 * digit), h * 0.9), fill=255, width=5)
    return Image.fromarray(255 - np.asarray(canvas)) if dark_on_light else canvas


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    """Good files (PNG, JPEG, one in a nested folder) and bad ones, each named for its fault."""
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    files = {
        "png": folder / "a.png",
        "jpeg": folder / "nested" / "b.jpg",
        "light": folder / "c.PNG",
        "blank": tmp_path / "blank.png",
        "text": tmp_path / "notes.png",
        "cut": tmp_path / "cut.jpg",
        "missing": tmp_path / "missing.png",
    }
    digit_image(3).save(files["png"])
    digit_image(7, (200, 150), dark_on_light=False).save(files["jpeg"], quality=90)
    digit_image(5, (40, 30)).save(files["light"])
    Image.new("L", (50, 50), 200).save(files["blank"])
    files["text"].write_text("not an image")
    buffer = io.BytesIO()
    digit_image(1).save(buffer, format="JPEG")
    files["cut"].write_bytes(buffer.getvalue()[:300])
    (folder / ".hidden.png").write_bytes(files["png"].read_bytes())
    (folder / "readme.txt").write_text("skipped when walking the folder")
    return files


def expected_probabilities(run_dir: Path, image_path: Path, style: str = "mnist") -> np.ndarray:
    """The model run directly: prepared image -> x / 255 -> unfused PyTorch model -> softmax."""
    run = load_run(run_dir)
    image = open_image(image_path)
    pixels = mnist_style(image)[None] if style == "mnist" else plain_resize(image, (28, 28), 1)
    x = torch.from_numpy(pixels[None]).float() / 255
    with torch.no_grad():
        return torch.softmax(run.model(x).double(), dim=1)[0].numpy()


def test_every_bad_file_gets_its_line_and_the_others_go_on(random_run, images, capsys):
    order = ["text", "png", "missing", "blank", "jpeg", "cut", "light"]
    argv = ["predict", *(str(images[k]) for k in order), "--run", str(random_run)]
    assert main(argv + ["--batch-size", "2"]) == 1  # batches of 2: failures across batches
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    out = captured.out.splitlines()
    assert [line.split(": ")[0] for line in out] == [
        str(images[k]) for k in ("png", "jpeg", "light")
    ]
    for line in out:
        assert re.fullmatch(r".+: \d \(\d+\.\d%\); then \d \(\d+\.\d%\), \d \(\d+\.\d%\)", line)
    err = captured.err.splitlines()
    assert err == [
        f"cnnlab: error: {images['text']}: not an image",
        f"cnnlab: error: {images['missing']}: not found",
        f"cnnlab: error: {images['blank']}: no ink found: the image is blank (less than 24 "
        "grey levels differ from its background)",
        err[3],
        "cnnlab: 4 of 7 inputs failed",
    ]
    assert err[3].startswith(f"cnnlab: error: {images['cut']}: cannot decode the image")


def test_json_lines_match_the_model_run_directly(random_run, images, capsys):
    files = [images["png"], images["jpeg"], images["light"]]
    assert main(["predict", *map(str, files), "--run", str(random_run), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rows = [json.loads(line) for line in captured.out.splitlines()]
    classes = [str(d) for d in range(10)]
    for path, row in zip(files, rows, strict=True):
        assert set(row) == {"file", "label", "index", "confidence", "top"}
        probs = expected_probabilities(random_run, path)
        best = np.argsort(-probs)[:3]
        assert row["file"] == str(path)
        assert row["index"] == best[0] and row["label"] == classes[best[0]]
        assert row["confidence"] == pytest.approx(probs[best[0]], abs=1e-5)
        assert [name for name, _ in row["top"]] == [classes[i] for i in best]
        assert [p for _, p in row["top"]] == pytest.approx(probs[best].tolist(), abs=1e-5)


@pytest.mark.parametrize("k,expected", [(1, 1), (5, 5), (25, 10)])
def test_top_k(random_run, images, capsys, k, expected):
    argv = ["predict", str(images["png"]), "--run", str(random_run), "--json", "--top-k", str(k)]
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out)
    assert len(row["top"]) == expected
    probabilities = [p for _, p in row["top"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert len({name for name, _ in row["top"]}) == expected


def test_a_fashion_run_resizes_instead(tmp_path, images, capsys):
    run = write_random_run(tmp_path / "fashion", dataset="fashion-mnist")
    assert main(["predict", str(images["png"]), "--run", str(run), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    probs = expected_probabilities(run, images["png"], style="resize")
    assert row["index"] == probs.argmax()
    assert row["label"] == get_dataset("fashion-mnist").classes[probs.argmax()]
    assert row["confidence"] == pytest.approx(probs.max(), abs=1e-5)


def test_folders_are_walked_sorted_without_hidden_or_other_files(images, tmp_path):
    folder = images["png"].parent
    (folder / ".git").mkdir()
    (folder / ".git" / "x.png").write_bytes(b"")
    files, problems = collect_files([folder, images["text"], tmp_path / "empty"])
    walked = [folder / "a.png", folder / "c.PNG", folder / "nested" / "b.jpg"]
    assert files == walked + [images["text"], tmp_path / "empty"]
    assert problems == []  # a path that is not a folder is tried as a file, whatever its name
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "list.csv").write_text("1,2")
    files, problems = collect_files([tmp_path / "empty"])
    assert files == [] and problems[0].startswith(f"{tmp_path / 'empty'}: no image files")
    assert all(suffix in problems[0] for suffix in IMAGE_SUFFIXES)


def test_an_empty_folder_fails_with_its_message(random_run, tmp_path, images, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["predict", str(tmp_path / "empty"), str(images["png"]), "--run", str(random_run)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{images['png']}: ")
    assert captured.err.splitlines()[0].startswith(f"cnnlab: error: {tmp_path / 'empty'}: no image")


def test_preprocessing_for_each_dataset():
    assert preprocessing_for({"dataset": {"name": "mnist"}}) == "mnist"
    assert preprocessing_for({"dataset": {"name": "fashion-mnist"}}) == "resize"
    assert preprocessing_for({"train": {"dataset": "mnist"}}) == "mnist"
    assert preprocessing_for({"dataset": {"name": "cifar10"}}) == "resize"
    assert preprocessing_for({"dataset": {"name": "x", "preprocessing": "mnist"}}) == "mnist"
    with pytest.raises(CheckpointError, match="unknown preprocessing 'blur'"):
        preprocessing_for({"preprocessing": "blur"})


def test_show_draws_the_first_16(random_run, images, tmp_path, capsys):
    out = tmp_path / "figs" / "pred.png"
    argv = ["predict", str(images["png"]), str(images["jpeg"]), "--run", str(random_run)]
    assert main(argv + ["--show", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    assert capsys.readouterr().err == f"Wrote {out}\n"

    classifier = run_classifier(random_run, CPU)
    paths = [images["png"]] * 20
    results = list(predict_files(paths, classifier, keep_originals=MAX_SHOWN))
    assert all(isinstance(r, Prediction) for r in results)
    assert [r.original is not None for r in results] == [True] * 16 + [False] * 4
    fig = predictions_figure(results, classifier.classes, 20, "run")
    assert len(fig.axes) == 3 * 16
    assert fig._suptitle.get_text() == "Predictions of run: first 16 of 20 images"
    assert main(argv + ["--show", str(tmp_path / "pred.jpg")]) == 1
    assert "figures are written as PNG" in capsys.readouterr().err


def test_without_run_the_bundled_model_is_used(random_run, images, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bundled, "BUNDLED_RUN", tmp_path / "nothing")
    assert main(["predict", str(images["png"])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: no bundled model in ") and err.count("\n") == 1
    monkeypatch.setattr(bundled, "BUNDLED_RUN", random_run)
    assert main(["predict", str(images["png"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["file"] == str(images["png"])


def test_run_and_onnx_exclude_each_other(random_run, images, capsys):
    with pytest.raises(SystemExit):
        main(["predict", str(images["png"]), "--run", str(random_run), "--onnx", "m.onnx"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory) -> Path:
    """A small model trained on real MNIST (10,000 images, one epoch of the speedrun recipe)."""
    import os

    from cnnlab.run import train_run

    root = os.environ.get("CNNLAB_DATA")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip("needs a model that reads real digits: set CNNLAB_DATA to a folder with MNIST")
    config = TrainConfig(
        model="speedrun",
        epochs=1,
        train_subset=10_000,
        test_subset=1_000,
        batch_size=128,
        lr=0.008,
        schedule="onecycle",
        label_smoothing=0.1,
    )
    run_dir = tmp_path_factory.mktemp("runs") / "mnist-speedrun"
    train_run(config, CPU, Path(root), run_dir, log=lambda _: None)
    return run_dir


def test_a_digit_saved_as_people_do_gets_the_label_of_the_original(mnist_run, tmp_path, capsys):
    """The first 50 test digits the model reads with some confidence (>= 0.5; near-ties may
    flip under any change) each get, as a 28x28 PNG, inverted (dark on light), and upscaled to
    300x300 and saved as JPEG, the label the model gives the original test image.
    Measured (10,000 training images, 97.4% test accuracy): all first 100 digits agree."""
    test = load_split(get_dataset("mnist"), Path(load_run(mnist_run).config["data_root"]), False)
    classifier = run_classifier(mnist_run, CPU)
    probabilities = softmax(classifier.logits(test.images[:50].numpy()))
    confident = np.flatnonzero(probabilities.max(axis=1) >= 0.5)
    assert len(confident) >= 40
    original = probabilities.argmax(axis=1)[confident]
    assert (original == test.labels[confident].numpy()).mean() >= 0.9  # the model reads digits
    variants = {"png": [], "inverted": [], "photo": []}
    for n in confident:
        digit = test.images[n, 0].numpy()
        Image.fromarray(digit).save(tmp_path / f"{n:02d}.png")
        Image.fromarray(255 - digit).save(tmp_path / f"{n:02d}-inverted.png")
        photo = Image.fromarray(255 - digit).resize((300, 300), Image.Resampling.BICUBIC)
        photo.save(tmp_path / f"{n:02d}-photo.jpg", quality=90)
        variants["png"].append(tmp_path / f"{n:02d}.png")
        variants["inverted"].append(tmp_path / f"{n:02d}-inverted.png")
        variants["photo"].append(tmp_path / f"{n:02d}-photo.jpg")
    for name, files in variants.items():
        assert main(["predict", *map(str, files), "--run", str(mnist_run), "--json"]) == 0
        labels = [json.loads(line)["index"] for line in capsys.readouterr().out.splitlines()]
        assert labels == original.tolist(), name
