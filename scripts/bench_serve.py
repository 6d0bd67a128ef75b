"""Measure `cnnlab serve`: POST /api/predict latency (p50, p99) and requests/s, for 1 and 50
concurrent clients, with and without activations; the two map encodings; replicas vs a lock.

    PYTHONPATH=src python scripts/bench_serve.py --run runs/<run> [--requests 200]

Starts a server on a free port of 127.0.0.1, measures, and always stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from cnnlab.cli.common import print_table
from cnnlab.runfiles import load_run
from cnnlab.serve.bench import HEADER, encode_ms, measure, replica_throughput
from cnnlab.serve.model_service import ModelService

BROWSER_DECODE = """async ([url, png]) => {
  const bytes = Uint8Array.from(atob(png), c => c.charCodeAt(0));
  const times = [];
  for (let i = 0; i < 10; i++) {
    const t0 = performance.now();
    const headers = {'Content-Type': 'image/png'};
    const r = await fetch(url, {method: 'POST', headers, body: bytes});
    const body = await r.json();
    for (const s of body.stages) {
      const [c, h, w] = s.shape;
      if (s.data) {
        const text = atob(s.data); const a = new Uint8Array(text.length);
        for (let k = 0; k < text.length; k++) a[k] = text.charCodeAt(k);
        const cv = document.createElement('canvas'); cv.width = w; cv.height = h;
        const ctx = cv.getContext('2d');
        for (let m = 0; m < c; m++) {
          const img = ctx.createImageData(w, h);
          for (let p = 0; p < w * h; p++) { const v = a[m * w * h + p];
            img.data[4*p] = v; img.data[4*p+1] = v; img.data[4*p+2] = v; img.data[4*p+3] = 255; }
          ctx.putImageData(img, 0, 0);
        }
      } else {
        const cv = document.createElement('canvas'); cv.width = w; cv.height = h;
        const ctx = cv.getContext('2d');
        await Promise.all(s.maps.map(async u => { const im = new Image(); im.src = u;
          await im.decode(); ctx.drawImage(im, 0, 0); }));
      }
    }
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(run: Path):
    port = free_port()
    command = [sys.executable, "-m", "cnnlab", "serve", "--run", str(run), "--port", str(port)]
    process = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def example_png() -> bytes:
    """A drawn-looking 7 on a 280x280 black pad, as the page sends it."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("L", (280, 280))
    draw = ImageDraw.Draw(image)
    draw.line([(85, 70), (200, 70), (135, 220)], fill=255, width=19, joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def browser_decode_ms(url: str, png: bytes) -> dict[str, float]:
    import base64

    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        page = browser.new_page()
        page.goto(url + "/healthz")
        data = base64.b64encode(png).decode()
        out = {}
        for encoding in ("raw", "png"):
            target = f"{url}/api/predict?activations=1&encoding={encoding}"
            out[encoding] = page.evaluate(BROWSER_DECODE, [target, data])
        browser.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    service = ModelService(load_run(args.run))
    png = example_png()
    pixels = service.prepare(png)
    stages = service.feature_maps(pixels)
    print(
        f"Encoding one answer's maps: raw {encode_ms(stages, 'raw'):.2f} ms, "
        f"png {encode_ms(stages, 'png'):.2f} ms (server side)"
    )
    for replicas in (1, 2, 4):
        rate = replica_throughput(
            lambda r=replicas: ModelService(load_run(args.run), r), pixels, 8, 400
        )
        print(f"Feature-map captures from 8 threads, {replicas} replica(s): {rate:.0f}/s")
    with server(args.run) as url:
        results = [
            measure(url, png, clients, args.requests, activations, encoding)
            for activations, encoding in ((False, "raw"), (True, "raw"), (True, "png"))
            for clients in (1, 50)
        ]
        print_table([r.row() for r in results], HEADER)
        with contextlib.suppress(ImportError):
            decode = browser_decode_ms(url, png)
            print(
                "In the browser, fetch + decode + draw every map (median of 10): "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in decode.items())
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
