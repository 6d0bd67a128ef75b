"""`cnnlab serve` as a real process: many clients at once, each getting its own image's answer.

The server runs on a free port of 127.0.0.1 only; every request loop here is bounded in count and
time, and the server is always ended at the end (even when a test fails).
"""

from __future__ import annotations

import base64
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.preprocess import to_model_input
from cnnlab.images import open_image, prepare
from cnnlab.runfiles import load_run
from tests.serve_support import (
    digit_images,
    png_bytes,
    resized_copy,
    serve_process,
    train_run_dir,
)

REQUESTS = 200
CLIENTS = 50


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return resized_copy(train_run_dir(tmp_path_factory.getbasetemp(), real=False))


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve_process(run_dir, log) as running:
        yield running


def offline(run_dir, images: list[bytes]):
    """What the model sees, its label and its conv1 maps for each image, computed here."""
    run = load_run(run_dir)
    model = run.model.eval()
    answers = []
    for data in images:
        pixels = prepare(open_image(data), "resize", (1, 28, 28)).copy()
        x = to_model_input(torch.from_numpy(pixels)[None], run.normalization)
        with torch.no_grad():
            label = str(int(model(x).argmax()))
            conv1 = F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=1)[0]
        answers.append((pixels, label, conv1.numpy()))
    return answers


def test_the_server_says_where_it_listens(server):
    text = server.output()
    assert f"Open {server.url}/" in text
    assert "Listening on 127.0.0.1 only" in text


def test_200_requests_from_50_clients_each_get_their_own_answer(server, run_dir):
    pictures, _ = digit_images(20, real=False)
    images = [png_bytes(p) for p in pictures]
    expected = offline(run_dir, images)
    assert len({label for _, label, _ in expected}) >= 3  # answers that can be told apart

    def one(n: int):
        k = n % len(images)
        activations = n % 2
        response = client.post(
            f"{server.url}/api/predict?activations={activations}",
            content=images[k],
            headers={"content-type": "image/png"},
        )
        return n, k, activations, response

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    with (
        httpx.Client(limits=limits, timeout=httpx.Timeout(120.0)) as client,
        ThreadPoolExecutor(CLIENTS) as pool,
    ):
        results = list(pool.map(one, range(REQUESTS)))

    wrong = []
    for n, k, activations, response in results:
        pixels, label, conv1 = expected[k]
        if response.status_code != 200:
            wrong.append((n, response.status_code, response.text[:200]))
            continue
        body = response.json()
        if body["label"] != label:
            wrong.append((n, "label", body["label"], label))
        if activations:  # the maps are this image's, not another request's
            seen = np.frombuffer(base64.b64decode(body["input"]["data"]), np.uint8)
            stage = body["stages"][0]
            maps = np.frombuffer(base64.b64decode(stage["data"]), np.uint8).reshape(32, 28, 28)
            values = stage["low"] + maps / 255.0 * (stage["high"] - stage["low"])
            step = (stage["high"] - stage["low"]) / 255
            if (seen != pixels.ravel()).any() or np.abs(values - conv1).max() > step:
                wrong.append((n, "maps"))
    assert wrong == []
    assert len(results) == REQUESTS


def test_ctrl_c_stops_the_server_cleanly(server):  # last: it ends the module's server
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=30) == 0
    text = server.output()
    assert text.rstrip().endswith("Stopped.")
    assert "Traceback" not in text
