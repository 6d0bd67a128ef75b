"""One process of a torchrun job in the tests: trains a run folder through the library, then
the same recipe without synchronised batch norm, and records what this process ended with.

    torchrun --standalone --nproc-per-node 2 -m tests.torchrun_child OUT DATA_ROOT

Writes OUT/rank<R>.json (metrics, test results, every file this process replaced into place)
and OUT/rank<R>-sync.safetensors, OUT/rank<R>-nosync.safetensors (the final weights).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from cnnlab.distributed import (
    DataParallel,
    close_process_group,
    init_process_group,
    world_from_env,
)
from cnnlab.distributed_run import train_job
from cnnlab.files import save_safetensors
from cnnlab.run import load_splits
from cnnlab.runtime import resolve_runtime
from cnnlab.train import fit
from tests.conftest import strip_timing
from tests.torchrun_recipe import RECIPE


def main(out: Path, data: Path) -> None:
    world = world_from_env()
    torch.set_num_threads(1)
    runtime = resolve_runtime("cpu", "fp32", 1)
    writes: list[str] = []
    real_replace = os.replace

    def logged_replace(src, dst, *args, **kwargs):  # every atomic write ends here
        writes.append(Path(dst).name)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = logged_replace
    init_process_group(world, runtime.device, timeout=120)
    try:
        synced, run_dir = train_job(RECIPE, runtime, world, data, out / "run", log=lambda _: None)
        os.replace = real_replace
        plain_recipe = replace(RECIPE, sync_bn=False)
        plain = fit(
            plain_recipe,
            load_splits(plain_recipe, data),
            runtime,
            log=lambda _: None,
            parallel=DataParallel(world, runtime.device, sync_bn=False),
        )
    finally:
        os.replace = real_replace
        close_process_group()
    for name, result in (("sync", synced), ("nosync", plain)):
        save_safetensors(out / f"rank{world.rank}-{name}.safetensors", result.model.state_dict())
    record = {
        "metrics": strip_timing(synced.metrics),
        "test": [synced.test_accuracy, synced.test_loss],
        "nosync_metrics": strip_timing(plain.metrics),
        "writes": writes,
        "run_dir": str(run_dir),
    }
    (out / f"rank{world.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
