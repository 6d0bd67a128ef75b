"""Shared helpers for the serve tests: a trained run, digit images, a free port, a server process.

The trained run is built once per test session in pytest's base temporary folder and reused by
every serve test module: on real MNIST when CNNLAB_DATA is set (good enough to read drawn
digits), else on the small synthetic data of `conftest.write_fake_dataset`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.conftest import write_fake_dataset

REPO = Path(__file__).resolve().parents[1]
REAL_SUBSET = 10_000  # one epoch on 10,000 real images: about 96% test accuracy, in seconds


def real_data_root() -> Path | None:
    value = os.environ.get("CNNLAB_DATA")
    if value and (Path(value) / "MNIST" / "raw").is_dir():
        return Path(value)
    return None


def train_run_dir(base: Path, real: bool, model: str = "cnn", dataset: str = "mnist") -> Path:
    """A run folder trained for one epoch, made once under `base` and reused after that."""
    import torch

    from cnnlab.config import TrainConfig
    from cnnlab.run import train_run
    from cnnlab.runtime import Runtime

    name = f"{'real' if real else 'synthetic'}-{model}-{dataset}"
    run_dir = base / name
    if (run_dir / "model.safetensors").exists():
        return run_dir
    if real:
        data_root = real_data_root()
        subset = {"train_subset": REAL_SUBSET, "test_subset": 1000}
    else:
        data_root = write_fake_dataset(base / "data", dataset)
        subset = {}
    config = TrainConfig(model=model, dataset=dataset, epochs=1, seed=0, **subset)
    runtime = Runtime(torch.device("cpu"), "fp32", False, torch.get_num_threads())
    building = base / f".{name}.building"
    train_run(config, runtime, data_root, building, overwrite=True, log=lambda _line: None)
    building.rename(run_dir)
    return run_dir


def resized_copy(run_dir: Path) -> Path:
    """The same run, recorded as wanting plain resizing instead of MNIST-style centring.

    The synthetic classes are where a square sits, which centring would erase; resized, each
    image keeps its place, so a synthetic model gives different answers for different images.
    """
    copy = run_dir.with_name(run_dir.name + "-resize")
    if not copy.exists():
        building = run_dir.with_name(f".{copy.name}.building")
        shutil.copytree(run_dir, building, dirs_exist_ok=True)
        config = json.loads((building / "config.json").read_text())
        config["preprocessing"] = "resize"
        (building / "config.json").write_text(json.dumps(config))
        building.rename(copy)
    return copy


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, 3) -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def digit_images(count: int, real: bool) -> tuple[np.ndarray, np.ndarray]:
    """`count` test images (N, 28, 28) uint8 and their labels: real MNIST, else synthetic."""
    from tests.conftest import synthetic_images

    if real:
        from cnnlab.data import get_dataset
        from cnnlab.data.sources import load_dataset

        _, test = load_dataset(get_dataset("mnist"), real_data_root(), allow_download=False)
        return test.images[:count, 0].numpy(), test.labels[:count].numpy()
    labels = np.arange(count) % 10
    return synthetic_images(labels, seed=123), labels


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path  # what the command printed

    def output(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def serve_process(run_dir: Path, log: Path, extra: tuple[str, ...] = (), startup_s: float = 90):
    """`python -m cnnlab serve` on a free port of 127.0.0.1; yields a `Server`; always ends it."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "cnnlab", "serve", "--run", str(run_dir), "--port", str(port)]
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*command, *extra], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"cnnlab serve exited early:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("cnnlab serve did not answer /healthz in time")
            time.sleep(0.2)
        yield Server(url, process, log)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
