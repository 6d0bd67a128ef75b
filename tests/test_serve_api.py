"""The live page's API through FastAPI's TestClient: every route, and every kind of bad request.

Answers are checked against independent references: the model run directly with PyTorch
(`F.conv2d`, softmax of its logits), the files of the run folder, the tutorial's layer sizes.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

from cnnlab.checkpoint import save_weights
from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.data.preprocess import to_model_input
from cnnlab.files import write_json
from cnnlab.images import open_image, prepare
from cnnlab.models import create_model
from cnnlab.run import run_config_json
from cnnlab.runfiles import load_run
from cnnlab.runtime import Runtime
from cnnlab.serve.app import create_app
from tests.conftest import one_error_line
from tests.serve_support import digit_images, jpeg_bytes, png_bytes, train_run_dir

LIMIT = 50_000  # bytes: a small upload limit, so that over-limit bodies stay small in tests
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_run_dir(tmp_path_factory.getbasetemp(), real=False)


@pytest.fixture(scope="module")
def app(run_dir):
    return create_app(run_dir, max_upload_bytes=LIMIT)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def images():
    pictures, labels = digit_images(10, real=False)
    return [png_bytes(p) for p in pictures]


def reference_answer(run_dir: Path, data: bytes) -> tuple[np.ndarray, torch.Tensor]:
    """What the model sees and its probabilities, computed here with the plain model."""
    run = load_run(run_dir)
    pixels = prepare(open_image(data), "mnist", (1, 28, 28))
    x = to_model_input(torch.from_numpy(pixels)[None], run.normalization)
    with torch.no_grad():
        return pixels, run.model.eval()(x).softmax(dim=1)[0]


def decode(array: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(array["data"]), np.uint8).reshape(array["shape"]).copy()


def assert_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    assert "Traceback" not in response.text
    return body["error"]


# ---- the page and the small routes


def test_page_and_its_files_are_served_from_here(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="pad"' in page.text
    texts = [page.text]
    for name in ("app.js", "colours.js", "explain.js", "style.css"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200
        texts.append(response.text)
    for text in texts:  # nothing loaded from elsewhere: it works offline
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert "touch-action: none" in texts[-1]


def test_healthz_openapi_and_unknown_routes(client):
    assert client.get("/healthz").json()["status"] == "ok"
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/explain", "/api/model", "/healthz"} <= set(schema["paths"])
    body = schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/png", "image/jpeg"} <= set(body)
    assert_error(client.get("/nowhere"), 404)
    assert_error(client.get("/api/predict"), 405)


def test_model_panel_facts(client, run_dir):
    info = client.get("/api/model").json()
    assert (info["name"], info["dataset"], info["input_shape"]) == ("cnn", "mnist", [1, 28, 28])
    assert info["classes"] == [str(d) for d in range(10)]
    assert info["parameters"] == 50378  # the tutorial's count
    assert (info["preprocessing"], info["drawing"], info["input_mode"]) == ("mnist", True, "draw")
    params = {row["name"]: row["parameters"] for row in info["summary"]}
    assert params == {
        "conv1": 320,
        "bn1": 64,
        "conv2": 18496,
        "bn2": 128,
        "pool": 0,
        "(flatten)": 0,
        "fc": 31370,
    }
    assert [row["output_shapes"][0] for row in info["summary"] if row["name"] == "fc"] == [[1, 10]]
    recorded = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert info["metrics"] == recorded
    assert info["test_accuracy"] == recorded[-1]["test_accuracy"]
    assert [(s["name"], s["shape"]) for s in info["stages"]] == [
        ("conv1", [32, 28, 28]),
        ("pool#1", [32, 14, 14]),
        ("conv2", [64, 14, 14]),
        ("pool#2", [64, 7, 7]),
    ]


def test_a_fashion_run_is_for_uploads(tmp_path):
    config = TrainConfig(dataset="fashion-mnist")
    runtime = Runtime(torch.device("cpu"), "fp32", False, 1)
    write_json(tmp_path / "config.json", run_config_json(config, runtime, tmp_path))
    save_weights(tmp_path, create_model(config.model_config()))
    with TestClient(create_app(tmp_path)) as fashion:
        info = fashion.get("/api/model").json()
    assert (info["dataset"], info["drawing"], info["input_mode"]) == (
        "fashion-mnist",
        False,
        "upload",
    )
    assert info["preprocessing"] == "resize" and info["classes"][0] == "T-shirt/top"
    assert info["metrics"] == [] and info["test_accuracy"] is None


# ---- predict


def test_predict_gives_the_models_own_answer(client, run_dir, images):
    for data in images[:4]:
        _, probabilities = reference_answer(run_dir, data)
        answer = client.post("/api/predict?top_k=3", content=data, headers=PNG).json()
        best = int(probabilities.argmax())
        assert answer["ink"] is True
        assert (answer["index"], answer["label"]) == (best, str(best))
        assert answer["confidence"] == pytest.approx(float(probabilities[best]), abs=1e-5)
        expected = probabilities.argsort(descending=True)[:3].tolist()
        assert [name for name, _ in answer["top"]] == [str(i) for i in expected]
        assert "stages" not in answer and "input" not in answer


def test_multipart_and_raw_body_give_the_same_answer(client, images):
    for data in images:
        raw = client.post("/api/predict?top_k=10", content=data, headers=PNG).json()
        form = client.post("/api/predict?top_k=10", files={"file": ("d.png", data, "image/png")})
        assert form.status_code == 200
        for key in ("label", "index", "confidence", "top"):
            assert raw[key] == form.json()[key]
        assert len(raw["top"]) == 10


def test_jpeg_uploads_are_read(client, images):
    picture = np.zeros((28, 28), np.uint8)
    picture[4:24, 12:16] = 255  # a "1"
    data = jpeg_bytes(picture)
    answer = client.post("/api/predict", content=data, headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200 and answer.json()["ink"] is True


def test_activations_are_the_models_feature_maps(client, run_dir, images):
    data = images[3]
    pixels, _ = reference_answer(run_dir, data)
    answer = client.post("/api/predict?activations=1", content=data, headers=PNG).json()
    assert (decode(answer["input"]) == pixels).all()
    titles = [s["title"] for s in answer["stages"]]
    assert titles == [
        "conv1: 32 maps, 28x28",
        "after pooling: 32 at 14x14",
        "conv2: 64 maps, 14x14",
        "after pooling: 64 at 7x7",
    ]
    run = load_run(run_dir)
    model = run.model.eval()
    x = to_model_input(torch.from_numpy(pixels)[None], run.normalization)
    with torch.no_grad():
        conv1 = F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=1)[0]
        pool1 = F.max_pool2d(torch.relu(model.bn1(conv1[None])), 2)[0]
    for stage, expected in zip(answer["stages"][:2], (conv1, pool1)):
        low, high = stage["low"], stage["high"]
        assert (low, high) == pytest.approx((float(expected.min()), float(expected.max())))
        values = low + decode(stage) / 255.0 * (high - low)
        assert np.abs(values - expected.numpy()).max() <= (high - low) / 255 / 2 + 1e-5


def test_png_encoding_carries_the_same_maps(client, images):
    url = "/api/predict?activations=1&encoding="
    raw = client.post(url + "raw", content=images[0], headers=PNG).json()
    png = client.post(url + "png", content=images[0], headers=PNG).json()
    for a, b in zip(raw["stages"], png["stages"]):
        maps = [
            np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))))
            for u in b["maps"]
        ]
        assert (np.stack(maps) == decode(a)).all()
    assert_error(client.post(url + "gif", content=images[0], headers=PNG), 422)


def test_a_blank_canvas_is_no_ink_and_no_guess(client):
    for colour in (0, 255):
        blank = png_bytes(np.full((280, 280), colour, np.uint8))
        response = client.post("/api/predict?activations=1", content=blank, headers=PNG)
        assert response.status_code == 200
        body = response.json()
        assert body["ink"] is False and body["message"].startswith("no ink")
        assert "label" not in body and "stages" not in body


# ---- bad uploads


def test_wrong_content_type_is_415(client, images):
    for kind in ("text/plain", "application/json", "application/octet-stream"):
        error = assert_error(
            client.post("/api/predict", content=images[0], headers={"content-type": kind}), 415
        )
        assert "multipart/form-data" in error
    assert_error(client.post("/api/predict", content=images[0]), 415)


def test_not_an_image_is_400(client):
    assert_error(client.post("/api/predict", content=b"not a picture at all", headers=PNG), 400)
    assert_error(
        client.post("/api/predict", content=png_bytes(np.ones((9, 9), np.uint8))[:40], headers=PNG),
        400,
    )
    assert_error(client.post("/api/predict", content=b"", headers=PNG), 400)
    form = client.post("/api/predict", files={"other": ("a.png", b"x", "image/png")})
    assert "'file'" in assert_error(form, 400)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 30_000) -> bytes:
    """A few hundred bytes that claim a side x side greyscale image (900 million pixels)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side + 1) * 4, 9)  # the first rows only
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_400(client):
    data = bomb_png()
    assert len(data) < LIMIT
    assert_error(client.post("/api/predict", content=data, headers=PNG), 400)
    assert_error(client.post("/api/predict", files={"file": ("b.png", data, "image/png")}), 400)


def test_a_declared_length_over_the_limit_is_413(client):
    body = b"\x89PNG" + bytes(LIMIT)
    assert "limit" in assert_error(client.post("/api/predict", content=body, headers=PNG), 413)
    assert_error(client.post("/api/predict", files={"file": ("a.png", body, "image/png")}), 413)


def test_a_chunked_body_over_the_limit_is_413(client):
    def chunks():
        for _ in range(10):
            yield bytes(10_000)

    response = client.post("/api/predict", content=chunks(), headers=PNG)
    assert assert_error(response, 413)
    explain = client.post(
        "/api/explain", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(explain, 413)


async def call_asgi(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
    """Send one POST /api/predict straight to the ASGI app; count the body chunks it reads."""
    read = 0
    sent: list[dict] = []

    async def receive():
        nonlocal read
        if read < len(chunks):
            read += 1
            return {
                "type": "http.request",
                "body": chunks[read - 1],
                "more_body": read < len(chunks),
            }
        await asyncio.sleep(3600)  # a client that never sends more

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/predict",
        "raw_path": b"/api/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), read


def test_413_comes_before_the_body_is_read(app):
    declared = [(b"content-type", b"image/png"), (b"content-length", str(10**9).encode())]
    status, body, read = asyncio.run(call_asgi(app, declared, [bytes(1000)] * 3))
    assert (status, read) == (413, 0) and "limit" in body["error"]
    chunked = [(b"content-type", b"image/png"), (b"transfer-encoding", b"chunked")]
    status, body, read = asyncio.run(call_asgi(app, chunked, [bytes(16_384)] * 100))
    assert status == 413 and read == LIMIT // 16_384 + 1  # stopped at the first chunk past it


def test_a_bug_is_a_json_500_without_traceback(app, client, images, monkeypatch):
    def broken(_pixels):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.state.service, "predict", broken)
    response = client.post("/api/predict", content=images[0], headers=PNG)
    assert assert_error(response, 500) == "internal server error"
    assert "secret" not in response.text


# ---- explain


def test_explain_equals_the_models_own_conv_output(client, run_dir, images):
    answer = client.post("/api/predict?activations=1", content=images[5], headers=PNG).json()
    pixels = decode(answer["input"])
    run = load_run(run_dir)
    model = run.model.eval()
    x = to_model_input(torch.from_numpy(pixels)[None], run.normalization)
    with torch.no_grad():
        conv1 = F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=1)
        conv2_in = F.max_pool2d(torch.relu(model.bn1(conv1)), 2)
        conv2 = F.conv2d(conv2_in, model.conv2.weight, model.conv2.bias, padding=1)
    padded = F.pad(x, (1, 1, 1, 1))[0, 0]
    for layer, channel, row, col, out in (
        ("conv1", 0, 0, 0, conv1),  # a corner: five of the nine inputs are padding
        ("conv1", 7, 14, 9, conv1),
        ("conv1", 31, 27, 13, conv1),
        ("conv2", 0, 0, 13, conv2),
        ("conv2", 63, 7, 6, conv2),
    ):
        request = {
            "input": answer["input"],
            "layer": layer,
            "channel": channel,
            "row": row,
            "col": col,
        }
        e = client.post("/api/explain", json=request).json()
        expected = float(out[0, channel, row, col])
        assert e["matches"] is True
        assert e["model_value"] == pytest.approx(expected, abs=1e-5)
        assert e["reference"] == pytest.approx(e["model_value"], abs=1e-4)
        assert e["difference"] <= 1e-4
        assert sum(t["partial_sum"] for t in e["terms"]) + e["bias"] == pytest.approx(
            e["reference"], abs=1e-6
        )
        weight = getattr(model, layer).weight.detach()[channel]
        assert len(e["terms"]) == weight.shape[0]
        assert np.allclose(e["terms"][0]["weights"], weight[0].numpy(), atol=1e-7)
        assert e["bias"] == pytest.approx(float(getattr(model, layer).bias.detach()[channel]))
        if layer == "conv1":
            assert np.allclose(
                e["terms"][0]["window"], padded[row : row + 3, col : col + 3].numpy()
            )
            assert e["input_rows"] == [row - 1, row, row + 1]
            assert len(e["formula"]) == 8 and e["formula"][0].startswith("y[i,j] = sum_m sum_n")
    corner = client.post(
        "/api/explain",
        json={"input": answer["input"], "layer": "conv1", "channel": 0, "row": 0, "col": 0},
    ).json()
    assert corner["in_padding"] == [[True, True, True], [True, False, False], [True, False, False]]


def test_explain_takes_nested_lists_too(client, images):
    answer = client.post("/api/predict?activations=1", content=images[1], headers=PNG).json()
    nested = decode(answer["input"])[0].tolist()  # (28, 28)
    request = {"layer": "conv1", "channel": 2, "row": 5, "col": 6}
    a = client.post("/api/explain", json={"input": answer["input"], **request}).json()
    b = client.post("/api/explain", json={"input": nested, **request}).json()
    assert a["reference"] == b["reference"] and a["model_value"] == b["model_value"]


def test_explain_refuses_bad_requests(client, images):
    answer = client.post("/api/predict?activations=1", content=images[1], headers=PNG).json()
    good = {"input": answer["input"], "layer": "conv1", "channel": 0, "row": 0, "col": 0}
    assert "conv1, conv2" in assert_error(
        client.post("/api/explain", json=good | {"layer": "fc"}), 400
    )
    assert "0..31" in assert_error(client.post("/api/explain", json=good | {"channel": 32}), 400)
    assert_error(client.post("/api/explain", json=good | {"row": 28}), 400)
    assert_error(client.post("/api/explain", json=good | {"input": [[1, 2], [3, 4]]}), 400)
    assert_error(client.post("/api/explain", json=good | {"input": [[300] * 28] * 28}), 400)
    short = {"shape": [1, 28, 28], "data": base64.b64encode(bytes(10)).decode()}
    assert_error(client.post("/api/explain", json=good | {"input": short}), 400)
    assert_error(client.post("/api/explain", json=good | {"channel": -1}), 422)
    assert_error(client.post("/api/explain", json={"layer": "conv1"}), 422)
    assert_error(
        client.post(
            "/api/explain", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
    )


# ---- the command's errors


def test_serve_command_errors_are_one_line(tmp_path, capsys, monkeypatch, run_dir):
    assert main(["serve", "--run", str(tmp_path / "missing")]) == 1
    assert "no such run folder" in one_error_line(capsys)
    from cnnlab import bundled

    monkeypatch.setattr(bundled, "BUNDLED_RUN", tmp_path / "no-bundled-model")
    assert main(["serve"]) == 1  # an installation without the bundled model
    assert "no bundled model" in one_error_line(capsys)
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--run", str(run_dir), "--port", str(port)]) == 1
        assert "choose another --port" in one_error_line(capsys)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "uvicorn" else real(n, *a)
    )
    assert main(["serve", "--run", str(run_dir)]) == 1
    assert "pip install 'cnnlab[serve]'" in one_error_line(capsys)
