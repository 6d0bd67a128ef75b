"""How fast the live page's API answers: latency percentiles and requests per second.

`measure` sends the same image to a running `cnnlab serve` from N concurrent clients (threads,
one shared connection pool) and reports p50/p99 latency and throughput; `replica_throughput`
times the feature-map capture in-process with 1 (a lock) or more private model copies.
`scripts/bench_serve.py` starts a server and prints both.

    >>> measure("http://127.0.0.1:8000", png, clients=50, requests=200, activations=True)
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    clients: int
    requests: int
    activations: bool
    encoding: str
    p50_ms: float
    p99_ms: float
    requests_per_s: float
    errors: int
    answer_bytes: int  # size of one answer's body

    def row(self) -> list[str]:
        return [
            str(self.clients),
            "yes" if self.activations else "no",
            self.encoding if self.activations else "-",
            f"{self.p50_ms:.1f}",
            f"{self.p99_ms:.1f}",
            f"{self.requests_per_s:.0f}",
            f"{self.answer_bytes:,}",
            str(self.errors),
        ]


HEADER = ["clients", "activations", "encoding", "p50 ms", "p99 ms", "req/s", "bytes", "errors"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def measure(
    url: str,
    png: bytes,
    clients: int,
    requests: int,
    activations: bool,
    encoding: str = "raw",
    timeout_s: float = 60.0,
) -> Latency:
    """POST `png` to {url}/api/predict `requests` times from `clients` threads at once."""
    import httpx

    query = f"activations={int(activations)}&encoding={encoding}"
    target = f"{url}/api/predict?{query}"
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    errors = 0
    size = 0
    lock = threading.Lock()

    with httpx.Client(limits=limits, timeout=timeout_s) as client:

        def one(_n: int) -> None:
            nonlocal errors, size
            started = time.perf_counter()
            try:
                response = client.post(target, content=png, headers={"content-type": "image/png"})
                ok = response.status_code == 200
                length = len(response.content)
            except httpx.HTTPError:
                ok, length = False, 0
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                errors += not ok
                size = max(size, length)

        for _ in range(min(clients, 5)):  # warm the connections and the server
            one(0)
        latencies.clear()
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    return Latency(
        clients=clients,
        requests=requests,
        activations=activations,
        encoding=encoding,
        p50_ms=statistics.median(latencies),
        p99_ms=percentile(latencies, 99),
        requests_per_s=requests / wall,
        errors=errors,
        answer_bytes=size,
    )


def replica_throughput(service_factory, pixels: np.ndarray, threads: int, calls: int) -> float:
    """Feature-map captures per second from `threads` threads, for the service made by
    `service_factory()` (e.g. `lambda: ModelService(run, replicas=1)`)."""
    service = service_factory()
    service.feature_maps(pixels)  # warm up
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _n: service.feature_maps(pixels), range(calls)))
    return calls / (time.perf_counter() - started)


def encode_ms(stages, encoding: str, repeats: int = 20) -> float:
    """Median milliseconds to turn one answer's stages into JSON objects with `encoding`."""
    from cnnlab.serve.encoding import stage_json

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for stage in stages:
            stage_json(stage, encoding)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)
