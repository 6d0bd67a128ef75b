"""compare: parameter counts from the tutorial's arithmetic, results identical to training each
model alone with the same seed, and the printed table, results.json and plot."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.data import get_dataset
from cnnlab.data.sources import load_dataset
from cnnlab.data.splits import make_splits
from cnnlab.errors import ConfigError
from cnnlab.models import ModelConfig, count_parameters, create_model
from cnnlab.runtime import resolve_runtime
from cnnlab.teach import compare
from cnnlab.train import fit
from cnnlab.viz import save_figure
from cnnlab.viz.tutorial import comparison_figure
from tests.conftest import write_fake_dataset


def png_size(path: Path) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fake_dataset(root, "mnist", n_train=160, n_test=60)
    return root


def test_parameter_counts_follow_the_tutorial_arithmetic():
    counts = {c.label: compare.parameter_count(c, "mnist") for c in compare.CONTENDERS}
    assert counts == {
        "cnn": 50_378,  # the tutorial's count
        "mlp-64": 784 * 64 + 64 + 64 * 10 + 10,  # 50,890: about the CNN's
        "mlp-128": 784 * 128 + 128 + 128 * 10 + 10,  # the tutorial's MLP: 101,770
    }
    assert compare.mlp_parameter_formula("mnist", 64) == "784*64+64 + 64*10+10 = 50,890"
    formula = compare.mlp_parameter_formula("fashion-mnist", 128)
    model = create_model(ModelConfig("mlp", options={"hidden": 128}))
    assert formula.endswith(f"= {count_parameters(model):,}")


def test_compare_models_equals_training_each_model_alone(root):
    train, test = load_dataset(get_dataset("mnist"), root)
    splits = make_splits(train, test, train_subset=96, test_subset=40)
    runtime = resolve_runtime("cpu", "fp32")
    recipe = TrainConfig(epochs=1, batch_size=32, device="cpu", precision="fp32")
    partial: list[int] = []
    lines: list[str] = []
    result = compare.compare_models(
        recipe,
        splits,
        runtime,
        seeds=[0, 1],
        log=lines.append,
        epoch_log=lambda _line: None,
        on_run=lambda c: partial.append(len(c.runs)),
    )
    assert partial == [1, 2, 3, 4, 5, 6]
    assert len(lines) == 6 and lines[0].startswith("cnn")
    assert [s.label for s in result.summaries] == ["cnn", "mlp-64", "mlp-128"]
    assert [r.seed for r in result.runs] == [0, 0, 0, 1, 1, 1]  # seeds outer: fair timing
    mlp64 = result.summaries[1]
    assert mlp64.parameters == 50_890 and len(mlp64.accuracies) == 2
    alone = fit(
        TrainConfig(
            model="mlp",
            model_options={"hidden": 64},
            epochs=1,
            batch_size=32,
            seed=1,
            device="cpu",
            precision="fp32",
        ),
        splits,
        runtime,
        log=lambda _line: None,
    )
    assert mlp64.accuracies[1] == alone.test_accuracy
    assert mlp64.accuracy_std is not None and mlp64.accuracy_std >= 0
    assert all(s > 0 for s in mlp64.seconds)
    saved = result.to_json(runtime)
    assert saved["complete"] and saved["seeds"] == [0, 1] and len(saved["runs"]) == 6
    assert not {"model", "model_options", "seed"} & set(saved["recipe"])


def test_compare_command_prints_the_table_and_writes_json_and_plot(root, tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    args = ["compare", "--data-dir", str(root), "--epochs", "1", "--seeds", "2"]
    args += ["--train-subset", "64", "--test-subset", "40", "--batch-size", "32"]
    args += ["--device", "cpu", "--precision", "fp32", "--quiet", "--out", str(out_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mlp-64 (mlp, hidden 64): 784*64+64 + 64*10+10 = 50,890 parameters" in out
    assert "Epoch 1:" not in out  # --quiet
    assert re.search(r"model\s+parameters\s+test accuracy\s+training time", out)
    for label, params in [("cnn", "50,378"), ("mlp-64", "50,890"), ("mlp-128", "101,770")]:
        assert re.search(rf"^{label}\s+{params}\s+[\d.]+ ± [\d.]+%\s+[\d.]+ ± [\d.]+ s$", out, re.M)
    assert f"Wrote {out_dir / 'results.json'}" in out
    assert f"Wrote {out_dir / 'compare.png'}" in out
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["complete"] is True
    assert saved["recipe"]["train_subset"] == 64 and saved["seeds"] == [0, 1]
    assert [m["label"] for m in saved["models"]] == ["cnn", "mlp-64", "mlp-128"]
    assert [m["parameters"] for m in saved["models"]] == [50_378, 50_890, 101_770]
    for model in saved["models"]:
        assert len(model["accuracies"]) == 2
        assert model["accuracy_mean"] == pytest.approx(sum(model["accuracies"]) / 2)
    width, height = png_size(out_dir / "compare.png")
    assert width >= 1000 and height >= 400

    assert main(args) == 1  # an earlier comparison is not overwritten silently
    assert "--overwrite" in capsys.readouterr().err


def test_prepare_compare_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        compare.prepare_compare_dir(tmp_path / "file")
    folder = compare.prepare_compare_dir(tmp_path / "new" / "cmp")
    (folder / compare.RESULTS_FILE).write_text("{}")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists and is not empty; pass --overwrite"):
        compare.prepare_compare_dir(folder)
    assert compare.prepare_compare_dir(folder, overwrite=True) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # only its own files go


def test_comparison_figure_with_one_seed(tmp_path):
    fig = comparison_figure(
        ["cnn", "mlp-64"], [50_378, 50_890], [[0.98], [0.96]], [[30.0], [10.0]], "CNN vs MLP"
    )
    ax_acc, ax_time = fig.axes
    assert ax_acc.get_ylabel() == "test accuracy (%)"
    assert ax_time.get_ylabel() == "training time per run (s)"
    assert [t.get_text() for t in ax_acc.get_xticklabels()] == [
        "cnn\n50,378 params",
        "mlp-64\n50,890 params",
    ]
    assert ax_acc.get_ylim()[1] <= 100.5
    width, height = png_size(save_figure(fig, tmp_path / "c.png"))
    assert width > 800 and height > 300
