"""Training and inference throughput: cnnlab's loop against the tutorial's, the hardware limit.

    (a) the tutorial's loop exactly as written (`cnnlab.bench.tutorial`);
    (b) `cnnlab train`'s own epoch function (`train_one_epoch`) on the same number of steps;
    (c) the limit: forward GFLOP/s of one convolution at conv2's shape (batch 512, 32->64
        channels, 3x3, 14x14, channels_last) in bf16 and fp32.

(a) and (b) alternate, repeat after repeat, so drift in the machine's speed hits both alike;
every figure is the median over repeats.

    >>> report = run_bench(data_root, resolve_runtime(), BenchPlan(steps=300, repeats=3))
    >>> report.speedup, report.to_json()
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cnnlab.bench.timing import Clock, LoopRuns, timed
from cnnlab.bench.tutorial import tutorial_loop
from cnnlab.config import TrainConfig
from cnnlab.cpuload import LoadFollower
from cnnlab.data import get_dataset
from cnnlab.data.loader import DeviceLoader
from cnnlab.data.sources import load_dataset
from cnnlab.predict import EvalSettings, Predictor
from cnnlab.runtime import Runtime, seed_everything
from cnnlab.teach.summary import summarize
from cnnlab.train import build_model, make_optimizer, train_one_epoch

CONV2 = dict(in_channels=32, out_channels=64, size=14, kernel=3)  # conv2 of the tutorial CNN


@dataclass(frozen=True, kw_only=True)
class BenchPlan:
    """How much `run_bench` measures; the defaults are what BENCHMARKS.md reports."""

    steps: int = 300  # training steps of (a) and of (b) per repeat
    repeats: int = 3  # (a) and (b) alternate this many times
    limit_batch: int = 512
    limit_repeats: int = 5
    limit_iters: int = 20  # convolutions per timed repeat
    inference_batches: tuple[int, ...] = (1, 1000)
    inference_repeats: int = 5


def forward_flops_per_image(model: torch.nn.Module, input_shape) -> int:
    """2 x the multiply-adds of the conv and linear layers for one image (7.74 M for the cnn)."""
    rows = summarize(model, input_shape).rows
    return 2 * sum(r.mult_adds for r in rows if r.kind in ("Conv2d", "Linear"))


def conv_limit_gflops(
    precision: str,
    device: torch.device,
    batch: int = 512,
    repeats: int = 5,
    iters: int = 20,
    clock: Clock = time.perf_counter,
) -> float:
    """Median forward GFLOP/s of conv2's shape on `device`, channels_last (`precision`)."""
    s = CONV2
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    conv = torch.nn.Conv2d(s["in_channels"], s["out_channels"], s["kernel"], padding=1)
    conv = conv.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(batch, s["in_channels"], s["size"], s["size"], dtype=dtype, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    flops = batch * forward_flops_per_image(conv, x.shape[1:])

    def run() -> None:
        for _ in range(iters):
            conv(x)

    with torch.no_grad():
        for _ in range(3):
            conv(x)
        rates = [flops * iters / timed(run, device, clock)[1] / 1e9 for _ in range(repeats)]
    return statistics.median(rates)


def cnnlab_loop(
    data_root: Path,
    runtime: Runtime,
    steps: int,
    config: TrainConfig,
    clock: Clock = time.perf_counter,
    follow_load: bool = False,
    make_model: Callable = build_model,
) -> Callable[[], float]:
    """A function that runs `train_one_epoch` over `steps` batches and returns images/s; with
    `follow_load`, each run starts at the current thread count and follows the machine's load
    as training does (`cnnlab.cpuload.LoadFollower`). `make_model(config, runtime)` builds the
    model (an execution path under test)."""
    spec = get_dataset(config.dataset)
    train, _ = load_dataset(spec, data_root)
    split = train.subset(slice(0, steps * config.batch_size)).to(runtime.device)
    model = make_model(config, runtime)
    optimizer = make_optimizer(config, model.parameters())
    norm = spec.normalization(config.normalize)
    loader = DeviceLoader(split, config.batch_size, True, config.seed, norm, runtime.channels_last)
    epoch = [0]
    ceiling = torch.get_num_threads()

    def run() -> float:
        follower = LoadFollower(torch.get_num_threads(), ceiling) if follow_load else None
        _, seconds = timed(
            lambda: train_one_epoch(
                model, optimizer, loader, epoch[0], config, runtime, follower=follower, log=quiet
            ),
            runtime.device,
            clock,
        )
        epoch[0] += 1
        return len(split) / seconds

    return run


def quiet(line: str) -> None:
    """A log that says nothing (a benchmark's training loop)."""


@dataclass(frozen=True)
class InferenceRate:
    batch: int
    images_per_second: float  # median over repeats
    folded: bool  # whether the Predictor folded batch norm into the convolutions


def inference_throughput(
    model,
    runtime: Runtime,
    batch: int,
    input_shape: tuple[int, ...],
    repeats: int = 5,
    clock: Clock = time.perf_counter,
) -> InferenceRate:
    """Median images/s of a `Predictor` (eval mode, folded batch norm) at one batch size, on
    random uint8 images of `input_shape` (C, H, W); at least 200 images per repeat."""
    predictor = Predictor(
        model,
        EvalSettings(
            batch_size=batch, precision=runtime.precision, channels_last=runtime.channels_last
        ),
    )
    count = batch * max(1, 200 // batch)
    images = torch.randint(0, 256, (count, *input_shape), dtype=torch.uint8, device=runtime.device)

    def once() -> float:
        _, seconds = timed(lambda: predictor.logits(images), runtime.device, clock)
        return count / seconds

    once()
    rate = statistics.median(once() for _ in range(repeats))
    return InferenceRate(batch, rate, predictor.folded)


@dataclass(frozen=True)
class BenchReport:
    """What `run_bench` measured; the derived figures are properties, the same for every reader."""

    runtime: Runtime
    threads: int
    steps: int
    batch_size: int
    model: str
    epoch_images: int  # the dataset's training images: what "an epoch" means below
    tutorial: LoopRuns  # (a)
    cnnlab: LoopRuns  # (b)
    forward_flops_per_image: int
    limit_batch: int
    limit_gflops: dict[str, float]  # (c), by precision
    inference: tuple[InferenceRate, ...]
    torch_version: str = torch.__version__

    @property
    def speedup(self) -> float:
        return self.cnnlab.images_per_second / self.tutorial.images_per_second

    @property
    def train_flops_per_image(self) -> int:
        return 3 * self.forward_flops_per_image  # training taken as 3x the forward pass

    @property
    def cnnlab_gflops(self) -> float:
        return self.cnnlab.images_per_second * self.train_flops_per_image / 1e9

    @property
    def limit(self) -> float:
        """The limit at the precision (b) trained with."""
        return self.limit_gflops["bf16" if self.runtime.precision == "bf16" else "fp32"]

    @property
    def fraction_of_limit(self) -> float:
        return self.cnnlab_gflops / self.limit

    @property
    def limit_epoch_seconds(self) -> float:
        return self.epoch_images * self.train_flops_per_image / (self.limit * 1e9)

    @property
    def inference_folded(self) -> bool:
        return all(rate.folded for rate in self.inference)

    def to_json(self) -> dict:
        return {
            "device": self.runtime.to_json(),
            "torch": self.torch_version,
            "threads": self.threads,
            "steps": self.steps,
            "repeats": len(self.cnnlab.runs),
            "batch_size": self.batch_size,
            "model": self.model,
            "tutorial_images_per_second": self.tutorial.images_per_second,
            "cnnlab_images_per_second": self.cnnlab.images_per_second,
            "speedup": self.speedup,
            "tutorial_runs": list(self.tutorial.runs),
            "cnnlab_runs": list(self.cnnlab.runs),
            "forward_flops_per_image": self.forward_flops_per_image,
            "train_flops_per_image": self.train_flops_per_image,
            "cnnlab_gflops": self.cnnlab_gflops,
            "limit_batch": self.limit_batch,
            "limit_gflops": dict(self.limit_gflops),
            "fraction_of_limit": self.fraction_of_limit,
            "epoch_images": self.epoch_images,
            "limit_epoch_seconds": self.limit_epoch_seconds,
            "inference_images_per_second": {
                f"batch_{r.batch}": r.images_per_second for r in self.inference
            },
            "inference_folded": self.inference_folded,
        }


def run_bench(
    data_root: Path,
    runtime: Runtime,
    plan: BenchPlan = BenchPlan(),
    config: TrainConfig | None = None,
    log: Callable[[str], None] = print,
    clock: Clock = time.perf_counter,
) -> BenchReport:
    """Measure (a), (b), (c) and inference on the runtime's device."""
    config = config or TrainConfig()
    spec = get_dataset(config.dataset)
    seed_everything(0)
    threads = torch.get_num_threads()
    tutorial = tutorial_loop(data_root, plan.steps, runtime.device, clock)
    ours = cnnlab_loop(data_root, runtime, plan.steps, replace(config, seed=0), clock)
    tutorial_rates, our_rates = [], []
    ours()  # warm-up: first-call allocations and kernel choices
    for r in range(plan.repeats):
        tutorial_rates.append(tutorial())
        our_rates.append(ours())
        log(
            f"  repeat {r + 1}/{plan.repeats}: tutorial {tutorial_rates[-1]:,.0f} img/s, "
            f"cnnlab {our_rates[-1]:,.0f} img/s"
        )
    model = build_model(config, runtime).eval()
    limits = {
        p: conv_limit_gflops(
            p, runtime.device, plan.limit_batch, plan.limit_repeats, plan.limit_iters, clock
        )
        for p in ("bf16", "fp32")
    }
    inference = tuple(
        inference_throughput(model, runtime, b, spec.shape, plan.inference_repeats, clock)
        for b in plan.inference_batches
    )
    return BenchReport(
        runtime=runtime,
        threads=threads,
        steps=plan.steps,
        batch_size=config.batch_size,
        model=config.model,
        epoch_images=spec.train_size,
        tutorial=LoopRuns("tutorial loop", tuple(tutorial_rates)),
        cnnlab=LoopRuns("cnnlab train", tuple(our_rates)),
        forward_flops_per_image=forward_flops_per_image(model, spec.shape),
        limit_batch=plan.limit_batch,
        limit_gflops=limits,
        inference=inference,
    )


@dataclass(frozen=True)
class AblationReport:
    """What each part of the fast path adds; `loops[0]` is the tutorial loop, the baseline."""

    steps: int
    loops: tuple[LoopRuns, ...]

    def speedup(self, loop: LoopRuns) -> float:
        return loop.images_per_second / self.loops[0].images_per_second

    def to_json(self) -> dict:
        return {
            "steps": self.steps,
            "repeats": len(self.loops[0].runs),
            "images_per_second": {loop.name: loop.images_per_second for loop in self.loops},
            "speedup": {loop.name: self.speedup(loop) for loop in self.loops},
            "runs": {loop.name: list(loop.runs) for loop in self.loops},
        }


def ablation_bench(
    data_root: Path,
    runtime: Runtime,
    steps: int = 300,
    repeats: int = 5,
    log: Callable[[str], None] = print,
    clock: Clock = time.perf_counter,
) -> AblationReport:
    """What each part of the fast path adds on the runtime's device: the tutorial loop, then
    `train_one_epoch` in fp32 NCHW, + channels_last, + bf16 (where supported); interleaved in
    one process, medians."""
    device, threads, recipe = runtime.device, torch.get_num_threads(), TrainConfig()
    variants = {
        "tutorial loop": tutorial_loop(data_root, steps, device, clock),
        "uint8 in memory, fp32, NCHW": cnnlab_loop(
            data_root, Runtime(device, "fp32", False, threads), steps, recipe, clock
        ),
        "+ channels_last": cnnlab_loop(
            data_root, Runtime(device, "fp32", True, threads), steps, recipe, clock
        ),
    }
    if runtime.precision == "bf16":
        variants["+ bf16 autocast"] = cnnlab_loop(data_root, runtime, steps, recipe, clock)
    for run in variants.values():
        run()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        for name, run in variants.items():
            rates[name].append(run())
        log(f"  repeat {r + 1}/{repeats} done")
    return AblationReport(steps, tuple(LoopRuns(n, tuple(v)) for n, v in rates.items()))
