"""Data-parallel training under torchrun: the process group, sharded batches, whole-batch metrics.

Each process of a torchrun job runs `cnnlab train`; torchrun tells it its place in the job in
environment variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT, TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_RUN_ID), read by `world_from_env`:

    >>> world = world_from_env()                    # None outside torchrun
    >>> init_process_group(world, device, timeout=600)
    >>> fit(config, splits, runtime, parallel=DataParallel(world, device, sync_bn=False))
    >>> close_process_group()

Every process holds the whole dataset and walks the same seeded permutation in the same global
batches, keeping its own part of each (`cnnlab.data.loader.shard_range`); the model is wrapped
in DistributedDataParallel, so the averaged gradient is the gradient of the whole batch, and
the epoch's losses and counts are summed over the processes, so every process ends an epoch
with the same metrics. Only rank 0 writes files and prints (`cnnlab.distributed_run`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from cnnlab.choices import PEER_TIMEOUT
from cnnlab.data.loader import Shard, shard_range
from cnnlab.data.splits import Split
from cnnlab.errors import CnnlabError, ConfigError, TrainingError
from cnnlab.predict import EvalSettings, predict_logits
from cnnlab.runtime import available_cpus
from cnnlab.syncbn import synced_view

DEFAULT_TIMEOUT = PEER_TIMEOUT  # seconds a process waits for the others before giving up
MAX_TIMEOUT = 366 * 86400.0
T = TypeVar("T")


class PeerFailed(CnnlabError):
    """Another process of the job failed and said so; it prints its own error."""


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job."""

    rank: int  # 0 .. size - 1, over every machine
    size: int  # processes in the job
    local_rank: int  # on this machine
    local_size: int  # processes on this machine
    restart: int = 0  # how often torchrun has restarted the job's processes
    run_id: str = "none"  # torchrun's job id (--rdzv-id; a fresh uuid with --standalone)
    max_restarts: int = 0  # torchrun's --max-restarts

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.size)


def world_from_env(env: Mapping[str, str] | None = None) -> World | None:
    """The `World` torchrun's variables describe, or None when they are not set."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        size = int(env["WORLD_SIZE"])
        world = World(
            rank=int(env["RANK"]),
            size=size,
            local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
            local_size=int(env.get("LOCAL_WORLD_SIZE", size)),
            restart=int(env.get("TORCHELASTIC_RESTART_COUNT", 0)),
            run_id=env.get("TORCHELASTIC_RUN_ID", "none"),
            max_restarts=int(env.get("TORCHELASTIC_MAX_RESTARTS", 0)),
        )
    except ValueError as err:
        raise ConfigError(f"torchrun's environment variables are not numbers ({err})") from None
    if not (0 <= world.rank < world.size and 0 <= world.local_rank < world.local_size):
        raise ConfigError(
            f"RANK={world.rank}, WORLD_SIZE={world.size}, LOCAL_RANK={world.local_rank}, "
            f"LOCAL_WORLD_SIZE={world.local_size} do not describe a process of a job"
        )
    return world


def threads_per_process(local_size: int, cores: int | None = None) -> int:
    """The CPU threads each process gets so that the machine is not oversubscribed: the
    machine's cores (those this process may run on) shared evenly, at least one."""
    cores = available_cpus() if cores is None else cores
    return max(1, cores // local_size)


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def process_device(world: World, device: torch.device) -> torch.device:
    """A GPU job gives each process of a machine its own GPU: cuda:LOCAL_RANK."""
    if device.type != "cuda":
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"{world.local_size} processes on this machine but {torch.cuda.device_count()} "
            f"GPU(s); start at most one process per GPU (--nproc-per-node)"
        )
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def init_process_group(world: World, device: torch.device, timeout: float | None = None):
    """Join the job (torchrun's rendezvous, read from the environment); a collective that
    waits longer than `timeout` seconds (default 600) for another process fails instead of
    hanging.

    torchrun's agent keeps one key-value store for all the restarts of a job (unless
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1), and a restarted process could read the addresses
    the previous attempt left there (PyTorch issue 135712); the process group then lives under
    a key prefix of its own attempt, which every process of a machine agrees on.
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(f"--peer-timeout must be more than 0 and at most a year, got {timeout:g}")
    delta = dt.timedelta(seconds=timeout)
    store, _, _ = next(dist.rendezvous("env://", world.rank, world.size, timeout=delta))
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store = dist.PrefixStore(f"cnnlab/attempt-{world.restart}/", store)
    dist.init_process_group(
        backend_for(device),
        store=store,
        rank=world.rank,
        world_size=world.size,
        timeout=delta,
        device_id=device if device.type == "cuda" else None,
    )


def close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def comm_device() -> torch.device:
    """Where tensors for a collective live: the process's GPU with NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over every process, in float64 (counts stay exact)."""
    total = values.detach().to(comm_device(), torch.float64).clone()
    dist.all_reduce(total)
    return total.cpu()


def broadcast_json(value=None, src: int = 0):
    """Rank `src`'s JSON value, on every process (JSON in a byte tensor: nothing is pickled)."""
    data = json.dumps(value).encode() if dist.get_rank() == src else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=comm_device())
    dist.broadcast(size, src)
    buffer = torch.zeros(int(size), dtype=torch.uint8, device=comm_device())
    if dist.get_rank() == src:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, src)
    return json.loads(bytes(buffer.cpu().tolist()).decode())


def any_failed(failed: bool) -> bool:
    return bool(all_sum(torch.tensor([float(failed)]))[0] > 0)


def on_main(world: World, work: Callable[[], T]) -> T:
    """Run `work` on rank 0 only and give its JSON result to every process; when it raises a
    cnnlab error, rank 0 raises it and the others raise `PeerFailed`."""
    outcome, error = None, None
    if world.is_main:
        try:
            outcome = {"value": work()}
        except CnnlabError as err:
            error = err
    outcome = broadcast_json(outcome)
    if error is not None:
        raise error
    if outcome is None:
        raise PeerFailed("rank 0 failed")
    return outcome["value"]


def in_turn(world: World, work: Callable[[], T]) -> T:
    """Run `work` on every process: rank 0 first, then the first process of each other machine,
    then the rest, each turn after the previous one finished, so that data is downloaded,
    checked and cached once per machine and never by two processes at once."""
    turn = 0 if world.is_main else 1 if world.local_rank == 0 else 2
    result, error = None, None
    for current in range(3):
        if current == turn:
            try:
                result = work()
            except CnnlabError as err:
                error = err
        if any_failed(error is not None):
            if error is not None:
                raise error
            raise PeerFailed("another process failed")
    return result


@dataclass(frozen=True)
class Score:
    """Accuracy and mean loss on a split, over every process."""

    accuracy: float
    loss: float


class DataParallel:
    """`fit`'s hooks for a torchrun job (`cnnlab.train.Parallel`)."""

    def __init__(self, world: World, device: torch.device, sync_bn: bool = False):
        self.world = world
        self.device = device
        self.sync_bn = sync_bn

    @property
    def shard(self) -> Shard:
        return self.world.shard

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around `model`; with sync_bn around a view of it whose batch
        norms are synchronised (`cnnlab.syncbn.synced_view`). Either way the parameters are
        `model`'s own tensors, so its optimizer, evaluation and checkpoints see no difference.
        """
        module = synced_view(model, self.device) if self.sync_bn else model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def end_epoch(self, model: torch.nn.Module, result, images: int):
        """The epoch's step losses (each the mean over its whole batch) and accuracy over every
        process; then every process takes rank 0's batch-norm statistics, so they all hold the
        model that rank 0 saves and evaluate it alike."""
        steps = len(result.step_losses)
        totals = all_sum(torch.cat([result.step_losses.double(), torch.tensor([result.correct])]))
        losses = (totals[:steps] / self.world.size).float()
        correct = int(totals[steps])
        for buffer in model.buffers():
            dist.broadcast(buffer.data, 0)
        return replace(
            result,
            loss=float(losses.mean()),
            accuracy=correct / images,
            step_losses=losses,
            correct=correct,
        )

    def evaluate(self, model: torch.nn.Module, split: Split, settings: EvalSettings) -> Score:
        """Each process predicts its part of `split`; the counts and loss sums are added up."""
        lo, hi = shard_range(0, len(split), self.world.shard)
        correct = loss = torch.zeros((), dtype=torch.float64)
        if hi > lo:
            logits = predict_logits(model, split.images[lo:hi], settings)
            labels = split.labels[lo:hi].to(logits.device)
            correct = (logits.argmax(dim=1) == labels).sum().double().cpu()
            loss = F.cross_entropy(logits.float(), labels, reduction="sum").double().cpu()
        totals = all_sum(torch.stack([correct, loss]))
        n = max(len(split), 1)
        return Score(accuracy=float(totals[0]) / n, loss=float(totals[1]) / n)


def check_batch_size(batch_size: int, world_size: int) -> int:
    """The per-process batch: `--batch-size` is the global batch, which the processes share."""
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        options = [b for b in (lower, lower + world_size) if b > 0]
        raise ConfigError(
            f"--batch-size {batch_size} (the global batch) does not divide among {world_size} "
            f"processes; use a multiple of {world_size}, such as "
            + " or ".join(str(b) for b in options)
        )
    return batch_size // world_size


def lost_peer(err: BaseException, world: World | None = None) -> TrainingError | None:
    """A one-line error for a collective that failed because another process died or hung;
    None for any other error."""
    if not isinstance(err, (dist.DistError, RuntimeError)):
        return None
    text = str(err)
    lowered = text.lower()
    if "timed out" in lowered or "timeout" in lowered:
        what = "another training process stopped answering (timed out)"
    elif isinstance(err, dist.DistError) or any(
        word in lowered for word in ("connection", "gloo", "nccl", "peer", "socket")
    ):
        what = "lost contact with another training process"
    else:
        return None
    first = next((line for line in text.splitlines() if line.strip()), "")
    first = re.sub(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", first).split(". ")[0].strip()
    message = f"{what} ({first[:160]})." if first else f"{what}."
    if world is not None and world.restart < world.max_restarts:
        left = world.max_restarts - world.restart
        message += f" torchrun restarts the job ({left} restart(s) left)."
    return TrainingError(message)
