"""`cnnlab bench`: training and inference throughput against the tutorial's loop, in one process.

cnnlab bench --json bench.json
cnnlab bench --speedrun --seeds 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.bench import (
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


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure training speed against the tutorial's loop, and inference throughput",
        description="(a) the tutorial's DataLoader loop, (b) cnnlab's training epoch on the "
        "same number of steps, (c) the limit: conv2's forward GFLOP/s at batch 512. Medians "
        "over repeats, (a) and (b) alternating.",
    )
    p.add_argument(
        "--steps", type=positive_int, default=300, help="steps per repeat (default: 300)"
    )
    p.add_argument("--repeats", type=positive_int, default=3, help="repeats (default: 3)")
    add_device(p, precision=True)
    p.add_argument(
        "--speedrun",
        action="store_true",
        help="instead, run --preset speedrun over --seeds seeds and time it",
    )
    p.add_argument(
        "--ablation",
        action="store_true",
        help="instead, measure what each part of the fast path adds (data in memory, "
        "channels_last, bf16)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead, show where a training step of the tutorial recipe spends its time",
    )
    p.add_argument(
        "--accuracy",
        action="store_true",
        help="instead, train the fp32 tutorial program and cnnlab's defaults for 5 epochs on "
        "paired seeds (give --seeds 5) and compare test accuracy",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=10,
        help="seeds 0..N-1 for --speedrun and --accuracy (default: 10)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    add_data_dir(p)
    p.set_defaults(handler=run_bench_command)


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
        print(
            f"Speed-run over seeds 0-{args.seeds - 1}: test accuracy "
            f"{report['test_accuracy_mean']:.2%} ± {report['test_accuracy_std']:.2%} (std), "
            f"median training time {report['training_seconds_median']:.2f} s"
        )
        print(f"Whole `cnnlab train --preset speedrun` process: {report['process_seconds']:.1f} s")
    elif args.ablation:
        report = ablation_bench(root, runtime, args.steps, args.repeats)
        print_table(
            [
                [name, f"{rate:,.0f}", f"{report['speedup'][name]:.2f}x"]
                for name, rate in report["images_per_second"].items()
            ],
            ["training loop", "images/s", "vs tutorial"],
        )
    elif args.profile:
        rows = profile_step(runtime)
        shown = rows[:15]
        print_table(
            [[name, f"{ms:.3f}", f"{share:.1%}"] for name, ms, share in shown]
            + [
                [
                    "(all others)",
                    f"{sum(r[1] for r in rows[15:]):.3f}",
                    f"{sum(r[2] for r in rows[15:]):.1%}",
                ]
            ],
            ["operator (self time)", "ms per step", "share"],
        )
        report = {
            "profile": [{"operator": n, "ms_per_step": ms, "share": sh} for n, ms, sh in rows]
        }
    elif args.accuracy:
        report = accuracy_bench(root, runtime, args.seeds)
        print(
            f"Test accuracy, seeds 0-{args.seeds - 1}, 5 epochs: tutorial program (fp32) "
            f"{report['tutorial_mean']:.2%}, cnnlab train ({runtime.precision}) "
            f"{report['cnnlab_mean']:.2%}; paired difference "
            f"{report['mean_difference'] * 100:+.3f} ± "
            f"{report['difference_standard_error'] * 100:.3f} percentage points (standard error)"
        )
    else:
        report = run_bench(root, runtime, args.steps, args.repeats)
        print_report(report)
    if args.json:
        write_json(args.json, report)
        print(f"Wrote {args.json}")
    return 0


def print_report(r: dict) -> None:
    inference = r["inference_images_per_second"]
    lines = [
        f"(a) tutorial loop:    {r['tutorial_images_per_second']:>9,.0f} images/s",
        f"(b) cnnlab train:     {r['cnnlab_images_per_second']:>9,.0f} images/s  "
        f"({r['speedup']:.2f}x the tutorial loop)",
        f"model: {r['forward_flops_per_image'] / 1e6:.2f} MFLOP forward per image, "
        f"{r['train_flops_per_image'] / 1e6:.2f} MFLOP per training image (3x)",
        f"(b) achieves {r['cnnlab_gflops']:.0f} GFLOP/s",
        f"(c) limit, conv2 shape at batch 512: bf16 {r['limit_gflops']['bf16']:.0f} GFLOP/s, "
        f"fp32 {r['limit_gflops']['fp32']:.0f} GFLOP/s",
        f"(b) is {r['fraction_of_limit']:.1%} of the limit; an epoch at the limit would take "
        f"{r['limit_epoch_seconds']:.1f} s",
        f"inference: {inference['batch_1']:,.0f} images/s at batch 1, "
        f"{inference['batch_1000']:,.0f} images/s at batch 1000",
    ]
    print("\n".join(lines))
    print("(medians over repeats; per-repeat figures are in --json)")
