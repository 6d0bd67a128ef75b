"""`cnnlab bench`: training and inference throughput against the tutorial's loop, in one process.

cnnlab bench --json bench.json
cnnlab bench --speedrun --seeds 10

The measuring is `cnnlab.bench`; this module parses, calls it and renders its results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.bench import (
    AblationReport,
    AccuracyReport,
    BenchPlan,
    BenchReport,
    SpeedrunReport,
    StepProfile,
    ablation_bench,
    accuracy_bench,
    profile_step,
    run_bench,
    speedrun_bench,
)
from cnnlab.cli.common import add_data_dir, add_device, positive_int, print_table, runtime_for
from cnnlab.data import get_dataset
from cnnlab.data.sources import load_dataset, resolve_data_root
from cnnlab.files import write_json

PROFILE_ROWS = 15


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure training speed against the tutorial's loop, and inference throughput",
        description="(a) the tutorial's DataLoader loop, (b) cnnlab's training epoch on the "
        "same number of steps, (c) the limit: conv2's forward GFLOP/s at batch 512. Medians "
        "over repeats, (a) and (b) alternating. One of --speedrun, --ablation, --profile or "
        "--accuracy measures something else instead.",
    )
    p.add_argument(
        "--steps", type=positive_int, default=300, help="steps per repeat (default: 300)"
    )
    p.add_argument("--repeats", type=positive_int, default=3, help="repeats (default: 3)")
    add_device(p, precision=True)
    add_modes(p)
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=10,
        help="seeds 0..N-1 for --speedrun and --accuracy (default: 10)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    add_data_dir(p)
    p.set_defaults(handler=run_bench_command)


def add_modes(parser: argparse.ArgumentParser) -> None:
    """The modes that replace the default measurement; at most one can be given."""
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--speedrun",
        action="store_true",
        help="instead, run --preset speedrun over --seeds seeds and time it",
    )
    modes.add_argument(
        "--ablation",
        action="store_true",
        help="instead, measure what each part of the fast path adds (data in memory, "
        "channels_last, bf16)",
    )
    modes.add_argument(
        "--profile",
        action="store_true",
        help="instead, show where a training step of the tutorial recipe spends its time",
    )
    modes.add_argument(
        "--accuracy",
        action="store_true",
        help="instead, train the fp32 tutorial program and cnnlab's defaults for 5 epochs on "
        "paired seeds (give --seeds 5) and compare test accuracy",
    )


def run_bench_command(args: argparse.Namespace) -> int:
    runtime = runtime_for(args.device, args.precision)
    root = resolve_data_root(args.data_dir)
    if not args.profile:  # the profile runs on random images
        load_dataset(get_dataset("mnist"), root)  # present (or downloaded) before any timing
    print(
        f"Device: {runtime.device} ({runtime.to_json()['device_name']}), precision "
        f"{runtime.precision}, channels_last {runtime.channels_last}, threads {runtime.threads}"
    )
    if args.speedrun:
        report = speedrun_bench(root, runtime, args.seeds)
        print_speedrun(report)
    elif args.ablation:
        report = ablation_bench(root, runtime, args.steps, args.repeats)
        print_ablation(report)
    elif args.profile:
        report = profile_step(runtime)
        print_profile(report)
    elif args.accuracy:
        report = accuracy_bench(root, runtime, args.seeds)
        print_accuracy(report)
    else:
        report = run_bench(root, runtime, BenchPlan(steps=args.steps, repeats=args.repeats))
        print_report(report)
    if args.json:
        write_json(args.json, report.to_json())
        print(f"Wrote {args.json}")
    return 0


def print_speedrun(r: SpeedrunReport) -> None:
    print(
        f"Speed-run over seeds 0-{len(r.seeds) - 1}: test accuracy "
        f"{r.test_accuracy_mean:.2%} ± {r.test_accuracy_std:.2%} (std), "
        f"median training time {r.training_seconds_median:.2f} s"
    )
    print(f"Whole `cnnlab train --preset speedrun` process: {r.process_seconds:.1f} s")


def print_ablation(r: AblationReport) -> None:
    print_table(
        [
            [loop.name, f"{loop.images_per_second:,.0f}", f"{r.speedup(loop):.2f}x"]
            for loop in r.loops
        ],
        ["training loop", "images/s", "vs tutorial"],
    )


def print_profile(r: StepProfile) -> None:
    rows = r.top(PROFILE_ROWS)
    print_table(
        [[row.operator, f"{row.ms_per_step:.3f}", f"{row.share:.1%}"] for row in rows],
        ["operator (self time)", "ms per step", "share"],
    )


def print_accuracy(r: AccuracyReport) -> None:
    print(
        f"Test accuracy, seeds 0-{len(r.seeds) - 1}, {r.epochs} epochs: tutorial program (fp32) "
        f"{r.tutorial_mean:.2%}, cnnlab train ({r.precision}) {r.cnnlab_mean:.2%}; paired "
        f"difference {r.mean_difference * 100:+.3f} ± "
        f"{r.difference_standard_error * 100:.3f} percentage points (standard error)"
    )


def print_report(r: BenchReport) -> None:
    inference = ", ".join(
        f"{rate.images_per_second:,.0f} images/s at batch {rate.batch}" for rate in r.inference
    )
    folded = "batch norm folded" if r.inference_folded else "batch norm NOT folded"
    limits = ", ".join(f"{p} {gflops:.0f} GFLOP/s" for p, gflops in r.limit_gflops.items())
    lines = [
        f"(a) tutorial loop:    {r.tutorial.images_per_second:>9,.0f} images/s",
        f"(b) cnnlab train:     {r.cnnlab.images_per_second:>9,.0f} images/s  "
        f"({r.speedup:.2f}x the tutorial loop)",
        f"model: {r.forward_flops_per_image / 1e6:.2f} MFLOP forward per image, "
        f"{r.train_flops_per_image / 1e6:.2f} MFLOP per training image (3x)",
        f"(b) achieves {r.cnnlab_gflops:.0f} GFLOP/s",
        f"(c) limit, conv2 shape at batch {r.limit_batch}: {limits}",
        f"(b) is {r.fraction_of_limit:.1%} of the limit; an epoch at the limit would take "
        f"{r.limit_epoch_seconds:.1f} s",
        f"inference ({folded}): {inference}",
    ]
    print("\n".join(lines))
    print("(medians over repeats; per-repeat figures are in --json)")
