"""Throughput measurements, all in one process so their ratios are fair.

    (a) the tutorial's loop exactly as written: DataLoader over torchvision's MNIST with
        ToTensor, num_workers=0, fp32, batch 64, `loss.item()` every step;
    (b) `cnnlab train`'s own epoch function (`train_one_epoch`) on the same number of steps;
    (c) the limit: forward GFLOP/s of one convolution at conv2's shape (batch 512, 32->64
        channels, 3x3, 14x14, channels_last) in bf16 and fp32.

(a) and (b) alternate, repeat after repeat, so drift in the machine's speed hits both alike;
every figure is the median over repeats.

    >>> report = run_bench(data_root, resolve_runtime(), steps=300, repeats=3)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from cnnlab.config import TrainConfig, preset_config
from cnnlab.data import get_dataset
from cnnlab.data.loader import DeviceLoader
from cnnlab.data.preprocess import to_model_input
from cnnlab.data.sources import load_dataset
from cnnlab.models import ModelConfig, create_model
from cnnlab.predict import EvalSettings, Predictor
from cnnlab.run import load_splits
from cnnlab.runtime import Runtime, seed_everything
from cnnlab.teach.summary import summarize
from cnnlab.train import build_model, fit, make_optimizer, train_one_epoch, train_step

CONV2_SHAPE = dict(batch=512, in_channels=32, out_channels=64, size=14, kernel=3)


def forward_flops_per_image(model: torch.nn.Module, input_shape) -> int:
    """2 x the multiply-adds of the conv and linear layers for one image (7.74 M for the cnn)."""
    rows = summarize(model, input_shape).rows
    return 2 * sum(r.mult_adds for r in rows if r.kind in ("Conv2d", "Linear"))


def conv_limit_gflops(precision: str, repeats: int = 5, iters: int = 20) -> float:
    """Median forward GFLOP/s of conv2's shape at batch 512, channels_last (`precision`)."""
    s = CONV2_SHAPE
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(s["batch"], s["in_channels"], s["size"], s["size"], dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(s["in_channels"], s["out_channels"], s["kernel"], padding=1)
    conv = conv.to(dtype=dtype, memory_format=torch.channels_last)
    flops = (
        2 * s["batch"] * s["out_channels"] * s["size"] ** 2 * s["in_channels"] * s["kernel"] ** 2
    )
    rates = []
    with torch.no_grad():
        for _ in range(3):
            conv(x)
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(iters):
                conv(x)
            rates.append(flops * iters / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def tutorial_loader(data_root: Path, train: bool):
    """The tutorial's data: torchvision's MNIST with `ToTensor`, batch 64, `num_workers=0`."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    data = datasets.MNIST(
        root=str(data_root), train=train, download=False, transform=transforms.ToTensor()
    )
    return DataLoader(data, batch_size=64, shuffle=train)


def tutorial_model():
    """The tutorial's model, loss and optimizer: cnn, cross-entropy, Adam 1e-3, fp32."""
    model = create_model(ModelConfig("cnn"))
    return model, torch.nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-3)


def tutorial_steps(model, criterion, optimizer, loader, steps: int | None = None) -> int:
    """The tutorial's training loop as it is written, for `steps` batches (None: one epoch).

    Returns the number of images it trained on.
    """
    model.train()
    epoch_loss, images = 0.0, 0
    for step, (X, y) in enumerate(loader):
        if step == steps:
            break
        optimizer.zero_grad()
        loss = criterion(model(X), y)
        loss.backward()
        optimizer.step()
        epoch_loss += loss.item()
        images += len(y)
    return images


def tutorial_loop(data_root: Path, steps: int) -> Callable[[], float]:
    """A function that runs `steps` of the tutorial's loop and returns images/s."""
    loader = tutorial_loader(data_root, train=True)
    model, criterion, optimizer = tutorial_model()

    def run() -> float:
        start = time.perf_counter()
        images = tutorial_steps(model, criterion, optimizer, loader, steps)
        return images / (time.perf_counter() - start)

    return run


def cnnlab_loop(data_root: Path, runtime: Runtime, steps: int, config: TrainConfig):
    """A function that runs `train_one_epoch` over `steps` batches and returns images/s."""
    spec = get_dataset(config.dataset)
    train, _ = load_dataset(spec, data_root)
    split = train.subset(slice(0, steps * config.batch_size)).to(runtime.device)
    model = build_model(config, runtime)
    optimizer = make_optimizer(config, model.parameters())
    loader = DeviceLoader(
        split,
        config.batch_size,
        True,
        config.seed,
        spec.normalization(config.normalize),
        runtime.channels_last,
    )
    epoch = [0]

    def run() -> float:
        start = time.perf_counter()
        train_one_epoch(model, optimizer, loader, epoch[0], config, runtime)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        epoch[0] += 1
        return len(split) / (time.perf_counter() - start)

    return run


def inference_throughput(model, runtime: Runtime, batch: int, repeats: int = 5) -> float:
    """Median images/s of a `Predictor` (eval mode, folded batch norm) at one batch size."""
    predictor = Predictor(
        model,
        EvalSettings(
            batch_size=batch, precision=runtime.precision, channels_last=runtime.channels_last
        ),
    )
    count = 200 if batch == 1 else batch
    images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, device=runtime.device)

    def once() -> float:
        start = time.perf_counter()
        for i in range(0, count, batch):
            predictor.logits(images[i : i + batch])
        return count / (time.perf_counter() - start)

    once()
    return statistics.median(once() for _ in range(repeats))


def run_bench(
    data_root: Path,
    runtime: Runtime,
    steps: int = 300,
    repeats: int = 3,
    config: TrainConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure (a), (b), (c) and inference; return every figure in one JSON-ready dict."""
    config = config or TrainConfig()
    seed_everything(0)
    threads = torch.get_num_threads()
    tutorial = tutorial_loop(data_root, steps)
    ours = cnnlab_loop(data_root, runtime, steps, replace(config, seed=0))
    tutorial_rates, our_rates = [], []
    ours()  # warm-up: first-call allocations and kernel choices
    for r in range(repeats):
        tutorial_rates.append(tutorial())
        our_rates.append(ours())
        log(
            f"  repeat {r + 1}/{repeats}: tutorial {tutorial_rates[-1]:,.0f} img/s, "
            f"cnnlab {our_rates[-1]:,.0f} img/s"
        )
    model = build_model(config, runtime).eval()
    flops = forward_flops_per_image(model, get_dataset(config.dataset).shape)
    limits = {p: conv_limit_gflops(p) for p in ("bf16", "fp32")}
    tutorial_ips = statistics.median(tutorial_rates)
    our_ips = statistics.median(our_rates)
    achieved = our_ips * 3 * flops / 1e9  # training taken as 3x the forward pass
    limit = limits["bf16"] if runtime.precision == "bf16" else limits["fp32"]
    return {
        "device": runtime.to_json(),
        "torch": torch.__version__,
        "threads": threads,
        "steps": steps,
        "repeats": repeats,
        "batch_size": config.batch_size,
        "model": config.model,
        "tutorial_images_per_second": tutorial_ips,
        "cnnlab_images_per_second": our_ips,
        "speedup": our_ips / tutorial_ips,
        "tutorial_runs": tutorial_rates,
        "cnnlab_runs": our_rates,
        "forward_flops_per_image": flops,
        "train_flops_per_image": 3 * flops,
        "cnnlab_gflops": achieved,
        "limit_gflops": limits,
        "fraction_of_limit": achieved / limit,
        "limit_epoch_seconds": 60_000 * 3 * flops / (limit * 1e9),
        "inference_images_per_second": {
            "batch_1": inference_throughput(model, runtime, 1),
            "batch_1000": inference_throughput(model, runtime, 1000),
        },
    }


def speedrun_bench(
    data_root: Path, runtime: Runtime, seeds: int = 10, log: Callable[[str], None] = print
) -> dict:
    """`--preset speedrun` over seeds 0..seeds-1 with the data loaded once, then one whole
    `cnnlab train --preset speedrun` process timed from start to exit."""
    config = preset_config("speedrun")
    splits = load_splits(config, data_root)
    accuracies, seconds = [], []
    for seed in range(seeds):
        result = fit(replace(config, seed=seed), splits, runtime, log=lambda _: None)
        accuracies.append(result.test_accuracy)
        seconds.append(sum(m["seconds"] for m in result.metrics))
        log(f"  seed {seed}: test accuracy {accuracies[-1]:.4f}, training {seconds[-1]:.2f} s")
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable,
            "-m",
            "cnnlab",
            "train",
            "--preset",
            "speedrun",
            "--quiet",
            "--data-dir",
            str(data_root),
            "--out",
            str(Path(folder) / "run"),
        ]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        process_seconds = time.perf_counter() - start
    return {
        "config": config.to_json(),
        "seeds": list(range(seeds)),
        "test_accuracies": accuracies,
        "test_accuracy_mean": statistics.mean(accuracies),
        "test_accuracy_std": statistics.stdev(accuracies) if seeds > 1 else 0.0,
        "training_seconds": seconds,
        "training_seconds_median": statistics.median(seconds),
        "process_seconds": process_seconds,
    }


def tutorial_training(data_root: Path, seed: int, epochs: int = 5) -> float:
    """The tutorial's whole program (fp32, DataLoader, Adam 1e-3, batch 64): its test accuracy."""
    seed_everything(seed)
    train_loader = tutorial_loader(data_root, train=True)
    model, criterion, optimizer = tutorial_model()
    for _ in range(epochs):
        tutorial_steps(model, criterion, optimizer, train_loader)
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for X, y in tutorial_loader(data_root, train=False):
            correct += (model(X).argmax(dim=1) == y).sum().item()
            total += len(y)
    return correct / total


def accuracy_bench(
    data_root: Path,
    runtime: Runtime,
    seeds: int = 5,
    epochs: int = 5,
    log: Callable[[str], None] = print,
) -> dict:
    """Paired seeds: the fp32 tutorial program against `cnnlab train`'s defaults, test accuracy."""
    config = TrainConfig(epochs=epochs)
    splits = load_splits(config, data_root)
    tutorial, ours = [], []
    for seed in range(seeds):
        tutorial.append(tutorial_training(data_root, seed, epochs))
        result = fit(replace(config, seed=seed), splits, runtime, log=lambda _: None)
        ours.append(result.test_accuracy)
        log(f"  seed {seed}: tutorial {tutorial[-1]:.4f}, cnnlab {ours[-1]:.4f}")
    diffs = [b - a for a, b in zip(tutorial, ours)]
    spread = statistics.stdev(diffs) if seeds > 1 else 0.0
    return {
        "epochs": epochs,
        "seeds": list(range(seeds)),
        "precision": runtime.precision,
        "tutorial_test_accuracies": tutorial,
        "cnnlab_test_accuracies": ours,
        "tutorial_mean": statistics.mean(tutorial),
        "cnnlab_mean": statistics.mean(ours),
        "mean_difference": statistics.mean(diffs),
        "difference_standard_error": spread / seeds**0.5,
    }


def profile_step(runtime: Runtime, config: TrainConfig | None = None, steps: int = 50) -> list:
    """Where one training step's time goes: (operator, ms per step, share), largest first.

    Profiles `train_step` on random data of the recipe's batch size under torch.profiler;
    the profiler adds some overhead of its own, so read the shares, not the totals.
    """
    from torch.profiler import ProfilerActivity, profile

    config = config or TrainConfig()
    spec = get_dataset(config.dataset)
    model = build_model(config, runtime)
    optimizer = make_optimizer(config, model.parameters())
    images = torch.randint(0, 256, (config.batch_size, *spec.shape), dtype=torch.uint8)
    x = to_model_input(images.to(runtime.device), channels_last=runtime.channels_last)
    y = torch.randint(0, spec.num_classes, (config.batch_size,), device=runtime.device)
    for _ in range(10):
        train_step(model, optimizer, x, y, runtime.precision)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(model, optimizer, x, y, runtime.precision)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    rows = [
        (e.key, e.self_cpu_time_total / steps / 1000, e.self_cpu_time_total / total) for e in events
    ]
    return sorted(rows, key=lambda r: r[1], reverse=True)


def ablation_bench(
    data_root: Path,
    runtime: Runtime,
    steps: int = 300,
    repeats: int = 5,
    log: Callable[[str], None] = print,
) -> dict:
    """What each part of the fast path adds: the tutorial loop, then `train_one_epoch` in fp32
    NCHW, + channels_last, + bf16 (where supported); interleaved in one process, medians."""
    cpu_threads = torch.get_num_threads()
    variants = {
        "tutorial loop": tutorial_loop(data_root, steps),
        "uint8 in memory, fp32, NCHW": cnnlab_loop(
            data_root, Runtime(runtime.device, "fp32", False, cpu_threads), steps, TrainConfig()
        ),
        "+ channels_last": cnnlab_loop(
            data_root, Runtime(runtime.device, "fp32", True, cpu_threads), steps, TrainConfig()
        ),
    }
    if runtime.precision == "bf16":
        variants["+ bf16 autocast"] = cnnlab_loop(data_root, runtime, steps, TrainConfig())
    for run in variants.values():
        run()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        for name, run in variants.items():
            rates[name].append(run())
        log(f"  repeat {r + 1}/{repeats} done")
    medians = {name: statistics.median(v) for name, v in rates.items()}
    base = medians["tutorial loop"]
    return {
        "steps": steps,
        "repeats": repeats,
        "images_per_second": medians,
        "speedup": {name: rate / base for name, rate in medians.items()},
        "runs": rates,
    }
