"""featuremaps, samples and mistakes: captured tensors against the layers run by hand, the
printed output against an independent prediction, and the PNG files on disk."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torchvision.utils import make_grid

from cnnlab.cli import main
from cnnlab.data import get_dataset
from cnnlab.data.preprocess import Normalization
from cnnlab.data.sources import load_dataset
from cnnlab.errors import ConfigError
from cnnlab.models import ModelConfig, conv_layer_names, create_model, list_models
from cnnlab.predict import EvalSettings, predict_logits
from cnnlab.runfiles import load_run
from cnnlab.teach.featuremaps import block_outputs, capture_feature_maps
from cnnlab.viz.training import filter_grid
from cnnlab.viz.tutorial import feature_maps_figure, sample_grid, stage_mosaic
from tests.conftest import write_fake_dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_figure(path: Path, min_width: int = 400, min_height: int = 200) -> None:
    width, height = png_size(path)
    assert min_width <= width <= 5000 and min_height <= height <= 5000, (width, height)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fake_dataset(root, "mnist", n_train=200, n_test=120)
    write_fake_dataset(root, "fashion-mnist", n_train=200, n_test=120, seed=1)
    return root


@pytest.fixture(scope="module", params=list_models())
def trained(request, root, tmp_path_factory) -> tuple[str, Path]:
    """(model name, run folder): one epoch on 64 synthetic images, so it still makes mistakes."""
    run = tmp_path_factory.mktemp(f"run-{request.param}") / "run"
    argv = ["train", "--model", request.param, "--data-dir", str(root), "--epochs", "1"]
    argv += ["--train-subset", "64", "--batch-size", "32", "--device", "cpu", "--precision", "fp32"]
    assert main([*argv, "--out", str(run), "--quiet"]) == 0
    return request.param, run


def has_conv(name: str) -> bool:
    return bool(conv_layer_names(create_model(ModelConfig(name))))


# --- capture: the library ---------------------------------------------------------------------


def test_capture_matches_the_tutorial_cnn_run_layer_by_layer():
    torch.manual_seed(0)
    model = create_model(ModelConfig("cnn")).eval()
    x = torch.randn(2, 1, 28, 28)
    maps = capture_feature_maps(model, x)
    with torch.no_grad():
        conv1 = model.conv1(x)
        relu1 = torch.relu(model.bn1(conv1))
        pool1 = model.pool(relu1)  # (2, 32, 14, 14)
        conv2 = model.conv2(pool1)
        relu2 = torch.relu(model.bn2(conv2))
        pool2 = model.pool(relu2)  # (2, 64, 7, 7)
        logits = model(x)
    expected = {
        "conv1": conv1,
        "relu#1": relu1,
        "pool#1": pool1,
        "conv2": conv2,
        "relu#2": relu2,
        "pool#2": pool2,
    }
    assert [s.name for s in maps.stages] == list(expected)
    assert [s.kind for s in maps.stages] == ["conv", "relu", "pool"] * 2
    for stage in maps.stages:
        assert stage.tensor.shape == expected[stage.name].shape, stage.name
        torch.testing.assert_close(stage.tensor, expected[stage.name])
    torch.testing.assert_close(maps.logits, logits)
    blocks = block_outputs(maps)
    assert [(s.name, tuple(s.tensor.shape)) for s in blocks] == [
        ("pool#1", (2, 32, 14, 14)),
        ("pool#2", (2, 64, 7, 7)),
    ]
    assert [s.shape_text for s in blocks] == ["32 maps, 14x14", "64 maps, 7x7"]


def test_capture_is_generic_and_copies_before_an_inplace_relu():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # (B, 8, 8, 8)
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(2),  # (B, 4, 2, 2)
        nn.Flatten(),
        nn.Linear(16, 5),
        nn.ReLU(),  # (B, 5): not a feature map, not captured
        nn.Linear(5, 3),
    )
    x = torch.randn(1, 3, 16, 16)
    maps = capture_feature_maps(model, x)
    assert [(s.name, s.kind, tuple(s.tensor.shape)) for s in maps.stages] == [
        ("0", "conv", (1, 8, 8, 8)),
        ("relu", "relu", (1, 8, 8, 8)),
        ("2", "conv", (1, 4, 8, 8)),
        ("3", "pool", (1, 4, 2, 2)),
    ]
    with torch.no_grad():
        pre_relu = model[0](x)
    assert (pre_relu < 0).any()
    torch.testing.assert_close(maps.stages[0].tensor, pre_relu)  # not overwritten in place
    assert [s.name for s in block_outputs(maps)] == ["relu", "3"]


def test_capture_leaves_the_model_as_it_was():
    model = create_model(ModelConfig("cnn")).train()
    capture_feature_maps(model, torch.zeros(1, 1, 28, 28))
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_capture_refuses_a_model_without_conv_layers_and_a_flat_input():
    with pytest.raises(ConfigError, match="no convolutional layers"):
        capture_feature_maps(create_model(ModelConfig("mlp")), torch.zeros(1, 1, 28, 28))
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\)"):
        capture_feature_maps(create_model(ModelConfig("cnn")), torch.zeros(1, 28, 28))


def test_feature_maps_figure_titles_every_panel_with_its_shape():
    model = create_model(ModelConfig("cnn"))
    maps = capture_feature_maps(model, torch.rand(1, 1, 28, 28))
    fig = feature_maps_figure(maps, block_outputs(maps), "Feature maps")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [
        "input\n1x28x28",
        "after pool#1\n32 maps, 14x14",
        "after pool#2\n64 maps, 7x7",
    ]
    assert fig._suptitle.get_text() == "Feature maps"
    assert fig.axes[0].get_xlabel() == "x (pixels)"


def test_stage_mosaic_scales_each_map_to_its_own_range():
    maps = torch.stack([torch.full((3, 3), 5.0), torch.arange(9.0).reshape(3, 3) * 100])
    mosaic = stage_mosaic(maps)  # 2 maps -> 2 columns, 1 row, 1-pixel gaps
    assert mosaic.shape == (5, 9)
    second = mosaic[1:4, 5:8]
    assert float(second.min()) == 0.0 and float(second.max()) == 1.0
    assert torch.isnan(mosaic[0]).all()  # the gap is drawn as background


def test_filter_grid_shows_each_filter_scaled_to_its_own_range_and_numbered():
    torch.manual_seed(0)
    weight = torch.randn(12, 3, 5, 5)
    weight[4] = 2.5  # a constant filter: drawn mid-grey, not divided by zero
    fig = filter_grid(weight, "Learned filters, conv1")
    (ax,) = fig.axes
    mosaic = torch.from_numpy(ax.images[0].get_array().filled(float("nan")))
    means = weight.mean(dim=1)
    reference = make_grid(means[:, None], normalize=True, scale_each=True)[0]  # torchvision's
    tiles = []
    for text, i in zip(ax.texts, range(12)):
        assert text.get_text() == str(i)
        column, row = round(text.get_position()[0] - 2), round(text.get_position()[1] + 0.6)
        tiles.append(mosaic[row : row + 5, column : column + 5])
    assert len(ax.texts) == 12
    for i, tile in enumerate(tiles):
        if i == 4:
            assert torch.equal(tile, torch.full((5, 5), 0.5))
            continue
        expected = reference[2 + i // 8 * 7 : 7 + i // 8 * 7, 2 + i % 8 * 7 : 7 + i % 8 * 7]
        assert torch.allclose(tile.float(), expected, atol=1e-6), i
    assert int(torch.isnan(mosaic).logical_not().sum()) == 12 * 25  # the rest is white gap
    assert fig._suptitle.get_text() == "Learned filters, conv1"


# --- featuremaps: the command -----------------------------------------------------------------


def test_featuremaps_command(trained, root, capsys):
    name, run = trained
    args = ["featuremaps", str(run), "--index", "7", "--data-dir", str(root)]
    if not has_conv(name):
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert "no convolutional layers" in err and len(err.splitlines()) == 1
        return
    assert main(args) == 0
    out = capsys.readouterr().out
    path = run / "featuremaps-test-7.png"
    assert f"Wrote {path}" in out
    assert_figure(path, 800, 300)
    if name == "cnn":
        assert re.search(r"pool#1\s+pool\s+32x14x14", out)
        assert re.search(r"pool#2\s+pool\s+64x7x7", out)
    # The printed prediction is the run's prediction for test image 7.
    loaded = load_run(run)
    _, test = load_dataset(get_dataset("mnist"), root)
    norm = Normalization.from_json(loaded.config["normalization"])
    probs = predict_logits(loaded.model, test.images[7:8], EvalSettings(norm=norm)).softmax(dim=1)[
        0
    ]
    label, predicted = int(test.labels[7]), int(probs.argmax())
    assert f"label {label}, predicted {predicted} ({float(probs.max()):.1%})" in out


def test_featuremaps_all_stages_and_out(trained, root, tmp_path, capsys):
    name, run = trained
    if not has_conv(name):
        pytest.skip(f"{name} has no conv layers")
    out_file = tmp_path / "figs" / "maps.png"
    args = ["featuremaps", str(run), "--all-stages", "--out", str(out_file)]
    assert main([*args, "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"Wrote {out_file}" in out
    assert_figure(out_file, 800, 500)
    if name == "cnn":
        for stage, shape in [("conv1", "32x28x28"), ("relu#1", "32x28x28"), ("conv2", "64x14x14")]:
            assert re.search(rf"{re.escape(stage)}\s+\w+\s+{shape}", out)


def test_featuremaps_errors_are_one_line(root, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data-dir", str(root), "--epochs", "1", "--train-subset", "32"]
    assert main([*argv, "--device", "cpu", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    cases = [
        (["featuremaps", str(run), "--index", "120"], "--index 120 is out of range"),
        (["featuremaps", str(tmp_path / "nowhere")], "no such run folder"),
        (["featuremaps", str(run), "--out", str(tmp_path / "maps.jpg")], "ending in .png"),
    ]
    for args, message in cases:
        assert main([*args, "--data-dir", str(root)]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and err.startswith("cnnlab: error:") and "\n" not in err


# --- samples ----------------------------------------------------------------------------------


def test_samples_default_name_in_the_current_folder(root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["samples", "--data-dir", str(root), "--count", "16"]) == 0
    out = capsys.readouterr().out
    assert "Drew 16 mnist train images (first 16 of 200)" in out
    assert "Wrote samples-mnist-train.png" in out
    assert_figure(tmp_path / "samples-mnist-train.png")


def test_samples_fashion_mnist_into_a_folder(root, tmp_path, capsys):
    args = ["samples", "--dataset", "fashion-mnist", "--seed", "3", "--split", "test"]
    assert main([*args, "--data-dir", str(root), "--out", str(tmp_path / "figs")]) == 0
    path = tmp_path / "figs" / "samples-fashion-mnist-test.png"
    assert f"Wrote {path}" in capsys.readouterr().out
    assert_figure(path, 800, 400)


def test_sample_grid_titles_each_image_with_its_label():
    spec = get_dataset("fashion-mnist")
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    fig = sample_grid(images, list(spec.classes), "Fashion-MNIST", columns=4)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:10] == list(spec.classes)
    assert titles[10:] == ["", ""]  # the two unused places of the 3x4 grid
    assert fig._suptitle.get_text() == "Fashion-MNIST"


# --- mistakes ---------------------------------------------------------------------------------


def test_mistakes_lists_exactly_the_wrong_predictions(trained, root, capsys):
    name, run = trained
    assert main(["mistakes", str(run), "--data-dir", str(root), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    channels_last = load_run(run).config["runtime"]["channels_last"]  # as the run trained
    loaded = load_run(run)
    _, test = load_dataset(get_dataset("mnist"), root)
    norm = Normalization.from_json(loaded.config["normalization"])
    logits = predict_logits(
        loaded.model, test.images, EvalSettings(norm=norm, channels_last=channels_last)
    )
    probs = logits.softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != test.labels).nonzero().flatten().tolist()
    assert wrong, f"the 1-epoch {name} run should still make mistakes"
    assert f"{len(wrong)} of {len(test)} test images are misclassified" in out
    rows = re.findall(r"^\s*(\d+)\s+(\d)\s+(\d)\s+([\d.]+)%$", out, flags=re.MULTILINE)
    assert len(rows) == min(len(wrong), 32)
    shown = [int(r[0]) for r in rows]
    assert set(shown) <= set(wrong)
    for index, true, pred, conf in rows:
        i = int(index)
        assert int(true) == int(test.labels[i]) and int(pred) == int(predicted[i])
        assert float(conf) == pytest.approx(100 * float(confidence[i]), abs=0.051)
    confs = [float(r[3]) for r in rows]
    assert confs == sorted(confs, reverse=True)
    path = run / "mistakes.png"
    assert f"Wrote {path}" in out
    assert_figure(path, 800, 300)


def test_mistakes_in_index_order_with_a_count(trained, root, tmp_path, capsys):
    _, run = trained
    out_file = tmp_path / "wrong.png"
    args = ["mistakes", str(run), "--order", "index", "--count", "5", "--out", str(out_file)]
    assert main([*args, "--data-dir", str(root), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    shown = [int(i) for i in re.findall(r"^\s*(\d+)\s+\d\s+\d\s+[\d.]+%$", out, re.MULTILINE)]
    assert shown == sorted(shown) and 1 <= len(shown) <= 5
    assert_figure(out_file, 300, 150)
