"""`cnnlab export --format onnx` and `cnnlab predict --onnx`: the file runs without cnnlab.

The exported file is checked with onnx and onnxruntime directly: its metadata, a dynamic batch
dimension, and logits that match the PyTorch model (unfolded, as trained) on inputs the export
never saw.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab import __version__, export
from cnnlab.cli import main
from cnnlab.errors import CheckpointError, ExportError
from cnnlab.runfiles import load_run
from tests.conftest import one_error_line, write_fake_dataset
from tests.test_predict import digit_image, write_random_run

onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> tuple[Path, Path, str]:
    """A random-weight run exported through the command line, with synthetic test data beside
    it: (run folder, ONNX file, what the command printed)."""
    base = tmp_path_factory.mktemp("export")
    run = write_random_run(base / "run")
    root = write_fake_dataset(base / "data", "mnist")
    out = base / "digits.onnx"
    argv = ["export", str(run), "--format", "onnx", "--out", str(out), "--data-dir", str(root)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return run, out, printed.getvalue()


def test_export_prints_the_exporter_and_both_agreement_figures(exported):
    run, out, printed = exported
    lines = printed.splitlines()
    assert re.fullmatch(rf"Wrote {re.escape(str(out))} \(opset \d+, dynamo exporter\)", lines[0])
    match = re.fullmatch(
        r"Check on 200 test images: max \|logit diff\| onnxruntime vs PyTorch "
        r"(\d\.\d\de-\d\d), same class on 200/200",
        lines[1],
    )  # the synthetic test split has 200 images, fewer than the 1,000 asked for
    assert match and float(match[1]) <= 1e-4


def test_the_file_describes_itself(exported):
    run, out, _ = exported
    model = onnx.load(out)
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == [str(d) for d in range(10)]
    assert json.loads(meta["input_shape"]) == [1, 28, 28]
    assert meta["preprocessing"] == "mnist"
    assert json.loads(meta["normalization"]) == {"scale": "x/255", "mean": None, "std": None}
    assert meta["cnnlab_version"] == __version__
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert meta["opset"] == str(opset[0])
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # any batch size
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops  # folded into the convolutions


def test_onnxruntime_matches_pytorch_on_new_inputs(exported):
    run, out, _ = exported
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = load_run(run).model
    x = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x).numpy()
    for batch in (1, 7, 1000):
        got = session.run(None, {session.get_inputs()[0].name: x[:batch].numpy()})[0]
        assert got.shape == (batch, 10)
        assert np.abs(got - expected[:batch]).max() <= 1e-4
        assert (got.argmax(axis=1) == expected[:batch].argmax(axis=1)).all()


def test_predict_with_the_onnx_file_equals_predict_with_the_run(exported, tmp_path, capsys):
    run, out, _ = exported
    files = []
    for digit in range(6):
        files.append(tmp_path / f"{digit}.png")
        digit_image(digit, dark_on_light=digit % 2 == 0).save(files[-1])
    rows = {}
    for source in (["--run", str(run)], ["--onnx", str(out)]):
        assert main(["predict", *map(str, files), *source, "--json", "--top-k", "10"]) == 0
        rows[source[0]] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows["--onnx"]] == [r["label"] for r in rows["--run"]]
    for a, b in zip(rows["--onnx"], rows["--run"]):
        assert dict(a["top"]) == pytest.approx(dict(b["top"]), abs=1e-5)


def test_a_failed_check_writes_nothing(tmp_path, monkeypatch):
    run = load_run(write_random_run(tmp_path / "run", model="mlp"))
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference is small enough
    with pytest.raises(ExportError, match=r"random images: max \|logit diff\| .* not written"):
        export.export_onnx(run, tmp_path / "m.onnx", None, check_images=50)
    assert not (tmp_path / "m.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary file left either


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_a_missing_extra_is_named(exported, tmp_path, monkeypatch, capsys, missing):
    run, out, _ = exported
    monkeypatch.setitem(sys.modules, missing, None)  # `import` now raises ImportError
    assert main(["export", str(run), "--out", str(tmp_path / "x.onnx")]) == 1
    assert one_error_line(capsys).endswith("pip install 'cnnlab[export]'")
    assert not (tmp_path / "x.onnx").exists()
    image = tmp_path / "d.png"
    digit_image(3).save(image)
    assert main(["predict", str(image), "--onnx", str(out)]) == 1
    assert one_error_line(capsys).endswith("pip install 'cnnlab[export]'")


def test_files_that_are_not_cnnlab_exports(tmp_path, capsys):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="garbage.onnx: not a valid ONNX model"):
        export.onnx_classifier(garbage)
    plain = tmp_path / "plain.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), plain)
    with pytest.raises(CheckpointError, match="plain.onnx: not a cnnlab export"):
        export.onnx_classifier(plain)
    image = tmp_path / "d.png"
    digit_image(3).save(image)
    assert main(["predict", str(image), "--onnx", str(tmp_path / "none.onnx")]) == 1
    assert one_error_line(capsys).endswith("none.onnx: no such ONNX file")


def test_export_needs_a_run_or_bundled(tmp_path, monkeypatch, capsys):
    assert main(["export"]) == 1
    assert "give a run folder or --bundled" in one_error_line(capsys)
    monkeypatch.setattr("cnnlab.bundled.BUNDLED_RUN", tmp_path / "none")
    assert main(["export", "--bundled"]) == 1
    assert "no bundled model" in one_error_line(capsys)
