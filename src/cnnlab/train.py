"""Training: the optimizer, the learning-rate schedule, the training step, `train_one_epoch`, `fit`.

    >>> result = fit(TrainConfig(epochs=1), splits, resolve_runtime())
    >>> result.test_accuracy

`fit` returns its metrics so tests and other commands (compare, bench) call it directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from cnnlab.checkpoint import TrainingState
from cnnlab.config import TrainConfig
from cnnlab.cpuload import LoadFollower
from cnnlab.data import DatasetSpec, get_dataset
from cnnlab.data.loader import DeviceLoader, Shard
from cnnlab.data.preprocess import to_model_input
from cnnlab.data.splits import DataSplits, Split
from cnnlab.errors import TrainingError
from cnnlab.metrics import evaluate
from cnnlab.models import CNN, create_model
from cnnlab.phases import Phases
from cnnlab.predict import EvalSettings
from cnnlab.runtime import Runtime, autocast, out_of_memory_hint, seed_everything

FINITE_CHECK_EVERY = 50  # steps between checks for a non-finite loss


def build_model(
    config: TrainConfig, runtime: Runtime, spec: DatasetSpec | None = None
) -> torch.nn.Module:
    """The recipe's untrained model for `spec`'s input and classes (default: the recipe's
    built-in dataset) on the runtime's device, in the runtime's memory layout."""
    model = create_model(config.model_config(spec)).to(runtime.device)
    if isinstance(model, CNN):  # the same values and gradients, faster (see CNN)
        model.pool_before_relu = True
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimizer, with its fused single-kernel step on CPU and CUDA (same maths, faster)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=config.lr, weight_decay=config.weight_decay, fused=fused
        )
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        fused=fused,
    )


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str) -> float:
    """Learning rate for `step` (0-based) of `total_steps`: a pure function, so resume is exact.

    onecycle: linear warm-up from base/25 to base over the first 25% of steps, then cosine to ~0.
    """
    if schedule == "constant":
        return base_lr
    t = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * t))
    warmup = 0.25
    if t < warmup:
        return base_lr * (0.04 + 0.96 * t / warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (1 - warmup))) + base_lr * 1e-4


def train_step(model, optimizer, x, y, precision: str, label_smoothing=0.0, mean_over=None):
    """One optimisation step; returns the detached loss and the number of correct predictions.

    The loss is the batch mean, or with `mean_over` the batch's sum divided by it (a process's
    part of a batch shared unevenly between data-parallel processes: `DeviceLoader.mean_over`).
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(x.device, precision):
        logits = model(x)  # (B, classes)
    reduction = "mean" if mean_over is None else "sum"
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing, reduction=reduction)
    if mean_over is not None:
        loss = loss / mean_over
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(dim=1) == y).sum()


@dataclass
class EpochResult:
    loss: float  # mean of the batch losses, as the tutorial prints it
    accuracy: float  # on the training batches, in train mode
    step_losses: torch.Tensor  # (steps,)
    correct: int = 0  # the training images predicted right, whose share `accuracy` is


def train_one_epoch(
    model,
    optimizer,
    loader: DeviceLoader,
    epoch: int,
    config: TrainConfig,
    runtime: Runtime,
    first_step: int = 0,
    total_steps: int | None = None,
    progress: bool = False,
    follower: LoadFollower | None = None,
    log: Callable[[str], None] = print,
) -> EpochResult:
    """Train for one epoch (0-based `epoch`); raises `TrainingError` on a non-finite loss.
    With `follower`, the thread count follows the CPUs other processes leave free."""
    from tqdm.auto import tqdm

    model.train()
    steps = len(loader)
    total_steps = total_steps or steps * config.epochs
    losses = torch.zeros(steps, device=runtime.device)
    correct = torch.zeros((), dtype=torch.long, device=runtime.device)
    bar = tqdm(
        total=steps,
        disable=not progress,
        leave=False,
        unit="batch",
        desc=f"Epoch {epoch + 1}",
        dynamic_ncols=True,
    )
    checked = 0
    for i, (x, y) in enumerate(loader.epoch(epoch)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(first_step + i, total_steps, config.lr, config.schedule)
        losses[i], batch_correct = train_step(
            model, optimizer, x, y, runtime.precision, config.label_smoothing, loader.mean_over(i)
        )
        correct += batch_correct
        if follower is not None and (threads := follower.poll()) is not None:
            torch.set_num_threads(threads)
            with bar.external_write_mode():  # a line above the progress bar, not through it
                log(f"Epoch {epoch + 1}, step {i + 1}: {follower.describe()}")
        if (i + 1) % FINITE_CHECK_EVERY == 0 or i + 1 == steps:
            check_finite(losses[checked : i + 1], epoch, checked)
            checked = i + 1
            if progress:
                bar.set_postfix(loss=f"{losses[i].item():.4f}", refresh=False)
        bar.update(1)
    bar.close()
    return EpochResult(
        loss=float(losses.mean()),
        accuracy=int(correct) / len(loader.split),
        step_losses=losses.cpu(),
        correct=int(correct),
    )


def check_finite(losses: torch.Tensor, epoch: int, offset: int) -> None:
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        step = offset + int(bad[0, 0]) + 1
        raise TrainingError(
            f"loss became {float(losses[bad[0, 0]])} at epoch {epoch + 1}, step {step}; "
            f"training stopped (try a lower --lr)."
        )


def restore(model, optimizer, state: TrainingState) -> None:
    """Load weights, optimizer state and RNG state for an exact resume.

    Optimizer moments come back from safetensors in the default layout; a fused optimizer walks
    parameter and moment memory in step, so each moment is given its parameter's layout
    (channels_last for convolutions), or the resumed updates would land on the wrong elements.
    """
    model.load_state_dict(state.model_state)
    optimizer.load_state_dict(state.optimizer_state)
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                param_state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
    torch.set_rng_state(state.rng_state)


def compile_warmup(step_model, model, loader: DeviceLoader, runtime: Runtime) -> float:
    """Compile forward and backward for every batch shape of an epoch, before timing starts.

    Batch norm's running statistics are restored afterwards and no optimizer step is taken, so
    the run's numbers do not depend on whether it was compiled ahead of time.
    """
    started = time.perf_counter()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = {min(loader.batch_size, len(loader.split)), len(loader.split) % loader.batch_size}
    model.train()
    for size in sorted(sizes - {0}):
        images, labels = loader.rows(slice(0, size))
        x = to_model_input(images, loader.norm, loader.channels_last)
        with autocast(x.device, runtime.precision):
            logits = step_model(x)
        F.cross_entropy(logits.float(), labels).backward()
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


@dataclass
class FitResult:
    model: torch.nn.Module
    metrics: list[dict]
    test_accuracy: float
    test_loss: float
    step_losses: torch.Tensor


@dataclass
class EpochEnd:
    """What a completed epoch hands to `fit`'s `on_epoch` hook (saving, logging, reducing)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    metrics: list[dict]  # every completed epoch so far, this one last
    global_step: int
    step_losses: torch.Tensor  # (steps so far,)


@dataclass
class DeviceSplits:
    """The splits on the training device, each moved there once."""

    train: Split
    val: Split | None
    test: Split

    @classmethod
    def of(cls, splits: DataSplits, device: torch.device) -> DeviceSplits:
        val = splits.val.to(device) if splits.val is not None else None
        return cls(splits.train.to(device), val, splits.test.to(device))


class Parallel(Protocol):
    """How `fit` trains as one of several data-parallel processes (`cnnlab.distributed`)."""

    shard: Shard  # this process's part of every batch

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training steps call (DistributedDataParallel around `model`)."""

    def end_epoch(self, model: torch.nn.Module, result: EpochResult, images: int) -> EpochResult:
        """The epoch's metrics over every process; afterwards every process holds one model."""

    def evaluate(self, model: torch.nn.Module, split: Split, settings: EvalSettings):
        """Accuracy and loss on `split` (`.accuracy`, `.loss`), the same on every process."""


def start_training(
    config: TrainConfig,
    runtime: Runtime,
    resume: TrainingState | None,
    spec: DatasetSpec | None = None,
):
    """Seed, build the model and optimizer, and restore `resume`: (model, optimizer, epoch)."""
    seed_everything(config.seed)
    model = build_model(config, runtime, spec)
    optimizer = make_optimizer(config, model.parameters())
    if resume is None:
        return model, optimizer, 0
    restore(model, optimizer, resume)
    return model, optimizer, resume.epochs_done


def epoch_record(epoch: int, result: EpochResult, lr: float, seconds: float, images: int) -> dict:
    return {
        "epoch": epoch + 1,
        "loss": result.loss,
        "train_accuracy": result.accuracy,
        "lr": lr,
        "seconds": seconds,
        "images_per_second": images / seconds,
        "threads": torch.get_num_threads(),  # at the epoch's end
    }


def fit(
    config: TrainConfig,
    splits: DataSplits,
    runtime: Runtime,
    resume: TrainingState | None = None,
    on_epoch: Callable[[EpochEnd], None] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    parallel: Parallel | None = None,
    phases: Phases | None = None,
) -> FitResult:
    """Train `config` on `splits`; `on_epoch` runs after each completed epoch (run.py saves there).

    The steps are separate functions (`start_training`, `train_one_epoch`, `evaluate`) so that
    a distributed run can enter between them: with `parallel` the loader is sharded, the model
    wrapped, the counts reduced; the caller saves on one process only. `phases` gets the
    seconds spent in setup, training, evaluation and saving.
    """
    phases = phases if phases is not None else Phases()
    spec = splits.spec or get_dataset(config.dataset)
    norm = spec.normalization(config.normalize)
    with phases("setup"):
        model, optimizer, start_epoch = start_training(config, runtime, resume, spec)
        data = DeviceSplits.of(splits, runtime.device)
    metrics = list(resume.metrics) if resume else []
    history = [resume.step_losses] if resume else [torch.zeros(0)]
    loader = DeviceLoader(
        data.train,
        config.batch_size,
        True,
        config.seed,
        norm,
        runtime.channels_last,
        augment=augment_config(config),
        device=runtime.device,
        shard=parallel.shard if parallel is not None else None,
    )
    total_steps = len(loader) * config.epochs
    step_model = model if parallel is None else parallel.wrap(model)
    score = evaluate if parallel is None else parallel.evaluate
    if config.compile:
        step_model = torch.compile(model)
        seconds = compile_warmup(step_model, model, loader, runtime)
        log(f"Compiled in {seconds:.1f}s (warm-up, not counted in the epoch times)")
    settings = EvalSettings(
        norm=norm, precision=runtime.precision, channels_last=runtime.channels_last
    )
    test_report = None
    follower = (
        LoadFollower(torch.get_num_threads(), runtime.follow_load) if runtime.follow_load else None
    )
    with out_of_memory_hint(runtime.device, config.batch_size):
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            result = train_one_epoch(
                step_model,
                optimizer,
                loader,
                epoch,
                config,
                runtime,
                first_step=epoch * len(loader),
                total_steps=total_steps,
                progress=progress,
                follower=follower,
                log=log,
            )
            if parallel is not None:
                result = parallel.end_epoch(model, result, len(data.train))
            seconds = time.perf_counter() - started
            phases.add("training", seconds)
            history.append(result.step_losses)
            lr = optimizer.param_groups[0]["lr"]
            record = epoch_record(epoch, result, lr, seconds, len(data.train))
            if follower is not None and follower.changes:  # these epochs cannot be repeated
                record["thread_changes"], follower.changes = follower.changes, 0
            with phases("evaluation"):
                if data.val is not None:
                    val_report = score(model, data.val, settings)
                    record |= {"val_accuracy": val_report.accuracy, "val_loss": val_report.loss}
                if epoch + 1 == config.epochs:
                    test_report = score(model, data.test, settings)
                    record |= {"test_accuracy": test_report.accuracy, "test_loss": test_report.loss}
            metrics.append(record)
            if on_epoch is not None:
                step = (epoch + 1) * len(loader)
                with phases("saving"):
                    on_epoch(EpochEnd(model, optimizer, metrics, step, torch.cat(history)))
            log(epoch_line(record))
        if test_report is None:  # resumed a run that had already finished all its epochs
            with phases("evaluation"):
                test_report = score(model, data.test, settings)
    return FitResult(model, metrics, test_report.accuracy, test_report.loss, torch.cat(history))


def augment_config(config: TrainConfig):
    """The recipe's `AugmentConfig`, or None for "none" (the loader's plain path)."""
    if config.augment == "none":
        return None
    from cnnlab.data.augment import get_augment_preset

    return get_augment_preset(config.augment)


def epoch_line(record: dict) -> str:
    """The tutorial's `Epoch 1: loss=0.1245`, then extra fields."""
    line = f"Epoch {record['epoch']}: loss={record['loss']:.4f}"
    line += f"  train_acc={record['train_accuracy']:.4f}"
    if "val_accuracy" in record:
        line += f"  val_acc={record['val_accuracy']:.4f}"
    return line + f"  {record['seconds']:.1f}s  {record['images_per_second']:,.0f} img/s"
