"""Where and how training runs: device, precision, memory format, threads, seeding.

The CLI resolves these once (`resolve_runtime`, pure) and passes the result down; the one function
that changes the process (`configure_process`) is called once by the entry point. Library code
reads no global settings. `is_out_of_memory` tells a device's allocation failure from other
errors, whatever the device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import sys
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.choices import DEVICES, PRECISIONS
from cnnlab.cpuload import allowed_cpus, free_cpus
from cnnlab.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "fp32" or "bf16", never "auto"
    channels_last: bool
    threads: int  # per process
    world_size: int = 1  # data-parallel processes (cnnlab.distributed)
    follow_load: int = 0  # N: training moves `threads` (up to N) as other processes come and go

    def to_json(self) -> dict:
        return {
            "device": str(self.device),
            "device_name": device_name(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "threads": self.threads,
            "world_size": self.world_size,
            "follow_load": self.follow_load,
        }


def seed_everything(seed: int) -> None:
    """The one seeding function: Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an unavailable explicit choice is an error."""
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is available here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: Apple's MPS backend is not available here")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 compute: CUDA with bf16 support, or a CPU with AVX-512 bf16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto` picks bf16 where it runs natively (BENCHMARKS.md: no loss of accuracy), else fp32."""
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}; choose from {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if requested == "bf16" and not bf16_supported(device):
        raise ConfigError(f"--precision bf16: {device.type} here has no native bf16 support")
    return requested


MMAP_THRESHOLD = 64 << 20  # bytes: smaller blocks come from the heap and are reused
TRIM_THRESHOLD = 512 << 20  # bytes of free heap top kept before returning it to the system


def keep_freed_memory() -> bool:
    """Stop glibc from returning each freed activation buffer to the kernel.

    By default glibc serves large blocks with mmap and unmaps them on free, adjusting its
    threshold as it goes; depending on the order of allocations a training process then takes
    millions of page faults per epoch and runs up to 40% slower (BENCHMARKS.md). Fixed
    thresholds keep the step's buffers in the heap. Linux with glibc only; True if applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl) or no libc found
        return False
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def configure_process(
    threads: int | None = None, log: Callable[[str], None] | None = None
) -> int | None:
    """Change the process-wide settings a training or predicting process needs, once.

    The entry point (the command line, a script) calls this; importing cnnlab or resolving a
    runtime changes nothing global. Sets glibc's allocator thresholds (`keep_freed_memory`) and
    the thread count: `threads` when given; else, unless OMP_NUM_THREADS says, the CPUs that
    other processes leave free (`cnnlab.cpuload`) when they are fewer than PyTorch's default,
    said through `log`. Returns the thread count it set, or None.
    """
    keep_freed_memory()
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        free, cpus = free_cpus()
        if free < torch.get_num_threads():
            threads = free
            if log is not None:
                log(
                    f"Threads: {free} of {cpus} CPUs, as other processes keep the rest busy "
                    "(--threads N sets the count)"
                )
    if threads is not None:
        check_threads(threads)
        torch.set_num_threads(threads)
    return threads


def check_threads(threads: int) -> None:
    """1 to the number of CPUs this process may use: more threads than CPUs only slow it down."""
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    cpus = available_cpus()
    if threads > cpus:
        raise ConfigError(
            f"--threads {threads} is more than the {cpus} CPUs available here; use at most {cpus}"
        )


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    return max(len(allowed_cpus()), 1)


def resume_settings(
    recorded: dict, device: str | None, precision: str | None, threads: int | None
) -> tuple[str, str, int]:
    """(device, precision, threads) for resuming a run whose config.json records `recorded` as
    its "runtime": what the run used, unless given. A recorded device or precision that this
    machine lacks is an error that says which flag chooses another."""
    recorded_device = str(recorded.get("device", "auto")).split(":")[0]
    if device is None:
        device = recorded_device if recorded_device in DEVICES else "auto"
        try:
            resolve_device(device)
        except ConfigError:
            raise ConfigError(
                f"the run trained on {device}, which is not available here; pass --device cpu "
                f"(or another) to continue it here (the result will not be bit-identical)"
            ) from None
    if precision is None:
        precision = recorded.get("precision", "auto")
        if precision == "bf16" and not bf16_supported(resolve_device(device)):
            raise ConfigError(
                f"the run trained in bf16, which {device} here does not support; pass "
                f"--precision fp32 to continue it in fp32 (the result will not be bit-identical)"
            )
    if threads is None:
        threads = min(int(recorded.get("threads", torch.get_num_threads())), available_cpus())
    return device, precision, threads


def runtime_differences(recorded_config: dict, runtime: Runtime) -> list[str]:
    """What differs between the runtime a run recorded and `runtime`, in words: each one can
    change the numbers of the epochs still to train."""
    recorded = recorded_config.get("runtime", {})
    now = runtime.to_json()
    labels = dict(
        device="device", device_name="processor", precision="precision", threads="threads"
    )
    differences = [
        f"{label} {recorded[key]} then, {now[key]} now"
        for key, label in labels.items()
        if key in recorded and str(recorded[key]) != str(now[key])
    ]
    version = recorded_config.get("versions", {}).get("torch")
    if version is not None and version != torch.__version__:
        differences.append(f"torch {version} then, {torch.__version__} now")
    return differences


def resolve_runtime(
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    follow_load: int = 0,
):
    """Device, precision, memory layout and thread count for training or predicting.

    Pure: it reads the machine and returns a `Runtime`; `configure_process` applies a thread
    count. `threads` is recorded as given, else the process's current count. `follow_load=N`
    (on a CPU only) lets training move the count, up to N, as other processes come and go.
    """
    dev = resolve_device(device)
    if threads is not None:
        check_threads(threads)
    return Runtime(
        device=dev,
        precision=resolve_precision(precision, dev),
        channels_last=dev.type in ("cpu", "cuda"),
        threads=threads if threads is not None else torch.get_num_threads(),
        follow_load=follow_load if dev.type == "cpu" else 0,
    )


def autocast(device: torch.device, precision: str):
    """bf16 autocast for `precision == "bf16"`, otherwise a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


CPU_OUT_OF_MEMORY = ("DefaultCPUAllocator: can't allocate memory", "MPS backend out of memory")


def is_out_of_memory(err: BaseException) -> bool:
    """An allocation failure on any device: `torch.OutOfMemoryError` (CUDA and other
    accelerators), or the plain RuntimeError that the CPU and MPS allocators raise."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in CPU_OUT_OF_MEMORY)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{os.cpu_count()}-core CPU"
    return device.type


@contextmanager
def out_of_memory_hint(device: torch.device, batch_size: int):
    """Turn an out-of-memory error of training (the accelerator's, or a CPU allocation that
    failed) into one line that suggests a smaller training batch. Evaluation halves its own
    batch instead (`cnnlab.predict`)."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not (isinstance(err, MemoryError) or is_out_of_memory(err)):
            raise
        raise TrainingError(
            f"out of memory on {device} at batch size {batch_size}; "
            f"try a smaller --batch-size, such as {max(batch_size // 2, 1)}"
        ) from None
