"""Two processes of one thread against one process of two threads, at the same global batch.

    python scripts/bench_torchrun.py --data-dir ../shared/data --train-subset 20000 --epochs 2

Each configuration trains the tutorial's recipe (`cnnlab train`, batch 64, the default
precision) for every seed; the runs alternate between the configurations, seed by seed, so a
change in the machine's speed during the measurement falls on both. Prints one line per run and
a Markdown table: training images/s of the first and of the last epoch (medians over the seeds;
the first epoch includes the kernels' warm-up), the wall time of the whole command (start-up
included), the test accuracy on all 10,000 images, and the load average of the machine, which
other people share.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "1 process x 2 threads": ["--threads", "2"],
    "1 process x 1 thread": ["--threads", "1"],
    "2 processes x 1 thread": ["--nproc", "2"],
    "2 processes x 1 thread, --sync-bn": ["--nproc", "2", "--sync-bn"],
}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train(flags: list[str], out: Path, attempts: int = 6) -> dict:
    """One run; a run ended by a signal from outside (a shared machine) is run again, saying so."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "cnnlab", "train", *flags, "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode < 0 and attempts > 1:
        print(f"  (killed by signal {-done.returncode} from outside; running it again)")
        shutil.rmtree(out, ignore_errors=True)
        time.sleep(20)
        return train(flags, out, attempts - 1)
    if done.returncode:
        raise SystemExit(
            f"{' '.join(cmd)} failed (exit status {done.returncode}):\n{done.stdout}{done.stderr}"
        )
    metrics = read_metrics(out)
    return {
        "images_per_second": [round(m["images_per_second"]) for m in metrics],
        "wall_seconds": time.perf_counter() - started,
        "test_accuracy": metrics[-1]["test_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--train-subset", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    recipe = ["--data-dir", args.data_dir, "--train-subset", str(args.train_subset)]
    recipe += ["--epochs", str(args.epochs)]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in args.configs}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for seed in range(args.seeds):
            for name in args.configs:
                out = work / f"{seed}-{name.replace(' ', '_').replace(',', '')}"
                shutil.rmtree(out, ignore_errors=True)
                result = train([*recipe, *CONFIGS[name], "--seed", str(seed)], out)
                results[name].append(result)
                load = os.getloadavg()[0]
                print(f"seed {seed}  {name:34s} {json.dumps(result)} load {load:.1f}", flush=True)
    print(f"load average at end: {os.getloadavg()}\n")
    print("| configuration | images/s, first epoch | images/s, last epoch | wall s ", end="")
    print("| test accuracy (seeds) | mean |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for name, runs in results.items():
        accuracies = [r["test_accuracy"] for r in runs]
        print(
            f"| {name} | {statistics.median(r['images_per_second'][0] for r in runs):,.0f} "
            f"| {statistics.median(r['images_per_second'][-1] for r in runs):,.0f} "
            f"| {statistics.median(r['wall_seconds'] for r in runs):.1f} "
            f"| {' / '.join(f'{a:.4f}' for a in accuracies)} "
            f"| {statistics.mean(accuracies):.4f} |"
        )


if __name__ == "__main__":
    main()
