"""`cnnlab bench`: training and inference throughput against the tutorial's loop, in one process.

cnnlab bench --json bench.json
cnnlab bench --speedrun --seeds 10
cnnlab bench --predict --run runs/<run>

The measuring is `cnnlab.bench`; this module parses, calls it and renders its results.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.cli.common import (
    add_data_dir,
    add_device,
    int_in,
    path_arg,
    positive_int,
    print_table,
    runtime_for,
)
from cnnlab.data import get_dataset
from cnnlab.errors import ConfigError
from cnnlab.files import write_json

if TYPE_CHECKING:
    from cnnlab.bench import (
        AblationReport,
        AccuracyReport,
        BenchReport,
        SpeedrunReport,
        StepProfile,
    )
    from cnnlab.bench.busy import BusyReport
    from cnnlab.bench.floors import Floors

PROFILE_ROWS = 15


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure training speed against the tutorial's loop, and inference throughput",
        description="(a) the tutorial's DataLoader loop, (b) cnnlab's training epoch on the "
        "same number of steps, (c) the limit: conv2's forward GFLOP/s at batch 512. Medians "
        "over repeats, (a) and (b) alternating. One of --speedrun, --ablation, --profile, "
        "--accuracy or --predict measures something else instead.",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=300,
        help="steps per repeat; --predict: calls with one image (default: 300)",
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        help="repeats; --predict: calls with the folder and the large batch (default: 3; "
        "--predict: 20)",
    )
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
    modes.add_argument(
        "--floors",
        action="store_true",
        help="instead, work out a training step's compute floor and memory floor from this "
        "machine's measured convolution rate and copy bandwidth, against the measured step",
    )
    modes.add_argument(
        "--busy",
        action="store_true",
        help="instead, measure training, evaluation and prediction alone and beside one "
        "CPU-bound process that the benchmark starts and stops (--repeats each)",
    )
    modes.add_argument(
        "--predict",
        action="store_true",
        help="instead, measure prediction: `cnnlab predict` on 1 image and on a folder of "
        "--images PNG files, and the model alone at batch 1 and --images, in PyTorch and "
        "onnxruntime (with the export extra) side by side",
    )
    parser.add_argument(
        "--run",
        type=path_arg,
        metavar="RUN",
        help="--predict: the run folder to measure (default: the bundled model)",
    )
    parser.add_argument(
        "--images",
        type=int_in(1, 100_000),
        default=1000,
        help="--predict: images in the folder and the large batch (default: 1000)",
    )


def run_bench_command(args: argparse.Namespace) -> int:
    from cnnlab.bench import (
        BenchPlan,
        ablation_bench,
        accuracy_bench,
        profile_step,
        run_bench,
        speedrun_bench,
    )
    from cnnlab.bench.busy import busy_bench
    from cnnlab.bench.floors import step_floors
    from cnnlab.data.sources import load_dataset, resolve_data_root

    runtime = runtime_for(args.device, args.precision)
    args.repeats = args.repeats or (20 if args.predict else 3)
    if args.predict:
        return run_predict_bench(args, runtime)
    if args.run is not None:
        raise ConfigError("--run is for --predict; the other measurements use the tutorial's CNN")
    root = resolve_data_root(args.data_dir)
    if not args.profile:  # the profile runs on random images
        load_dataset(get_dataset("mnist"), root)  # present (or downloaded) before any timing
    print(describe(runtime))
    if args.speedrun:
        report = speedrun_bench(root, runtime, args.seeds)
        print_speedrun(report)
    elif args.ablation:
        report = ablation_bench(root, runtime, args.steps, args.repeats)
        print_ablation(report)
    elif args.profile:
        report = profile_step(runtime)
        print_profile(report)
    elif args.floors:
        report = step_floors(root, runtime, args.steps, args.repeats)
        print_floors(report)
    elif args.busy:
        report = busy_bench(root, runtime, args.steps, args.repeats)
        print_busy(report)
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


def run_predict_bench(args: argparse.Namespace, runtime) -> int:
    from cnnlab.bench.prediction import BLOCKS, PredictPlan, predict_bench
    from cnnlab.bundled import bundled_run_dir
    from cnnlab.run import run_data_location
    from cnnlab.runfiles import load_run

    run_dir = args.run or bundled_run_dir()
    location = run_data_location(load_run(run_dir).config, args.data_dir, log=lambda _: None)
    print(describe(runtime))
    plan = PredictPlan(folder=args.images, single_calls=args.steps, folder_calls=args.repeats)
    report = predict_bench(run_dir, runtime, location.root, plan)
    print(f"Model: {report.source}; inputs: {report.inputs} written as PNG files")
    print_table(
        [
            [
                r.name,
                r.engine,
                f"{r.images_per_second:,.0f}",
                f"{r.per_image_ms(0.5):.3f}",
                f"{r.per_image_ms(0.99):.3f}",
            ]
            for r in report.runs
        ],
        ["measured", "engine", "images/s", "ms/image p50", "ms/image p99"],
    )
    print(
        f"({args.steps} calls with 1 image, {args.repeats} with {args.images:,}; the engines "
        f"take turns in {BLOCKS} blocks, each after an untimed call)"
    )
    if report.onnx_note:
        print(f"onnxruntime not measured: {report.onnx_note}")
    if args.json:
        write_json(args.json, report.to_json())
        print(f"Wrote {args.json}")
    return 0


def describe(runtime) -> str:
    return (
        f"Device: {runtime.device} ({runtime.to_json()['device_name']}), precision "
        f"{runtime.precision}, channels_last {runtime.channels_last}, threads {runtime.threads}"
    )


def print_speedrun(r: SpeedrunReport) -> None:
    print(
        f"Speed-run over seeds 0-{len(r.seeds) - 1}: test accuracy "
        f"{r.test_accuracy_mean:.2%} ± {r.test_accuracy_std:.2%} (std), "
        f"median training time {r.training_seconds_median:.2f} s"
    )
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in r.process_phases.items())
    print(f"Whole `cnnlab train --preset speedrun` process: {r.process_seconds:.1f} s ({phases})")


def print_floors(r: Floors) -> None:
    from cnnlab.bench.floors import LARGE_BUFFER

    print_table(
        [
            [
                layer.name,
                layer.kind,
                f"{layer.forward / 1e6:.2f}",
                f"{layer.backward / 1e6:.2f}",
                f"{layer.flops / 1e6:.1f}",
            ]
            for layer in r.layers
        ],
        ["layer", "kind", "forward MB", "backward MB", "MFLOP (fwd+bwd)"],
    )
    print(
        f"Per step of batch {r.batch} ({r.precision}): {r.bytes_per_step / 1e6:.1f} MB moved, "
        f"{r.train_flops / 1e9:.2f} GFLOP"
    )
    print(
        f"compute floor: {r.compute_ms:.2f} ms at {r.conv_gflops:.0f} GFLOP/s (conv2's shape); "
        f"memory floor: {r.memory_ms:.2f} ms at {r.copy_gbytes_per_s:.1f} GB/s (copying "
        f"{r.copy_buffer_bytes / 1e6:.1f} MB buffers)"
    )
    print(
        f"measured: {r.measured_ms:.2f} ms per step ({r.measured_images_per_second:,.0f} "
        f"images/s); the {r.binding} floor binds; the step runs at {r.fraction_of_floor:.0%} of "
        "it (see --profile for where the rest goes)"
    )
    print(
        f"layer by layer (each layer at its own limit, one after another): {r.layered_ms:.2f} "
        f"ms; the step runs at {r.fraction_of_layered_floor:.0%} of it. Memory floor with every "
        f"byte from memory ({r.large_copy_gbytes_per_s:.1f} GB/s copying "
        f"{LARGE_BUFFER >> 20} MiB): {r.memory_from_dram_ms:.2f} ms"
    )


def print_busy(r: BusyReport) -> None:
    free = "/".join(str(n) for n in sorted(set(r.free_threads)))
    print_table(
        [
            [
                loop.name,
                f"{loop.quiet_rate:,.0f}",
                f"{loop.kept(loop.busy_same_threads):.0%}",
                f"{loop.kept(loop.busy_free_threads):.0%}",
                f"{loop.kept(loop.busy_following):.0%}" if loop.busy_following else "-",
            ]
            for loop in r.loops
        ],
        [
            "loop",
            "alone, images/s",
            f"busy, {r.threads} threads",
            f"busy, {free} (free CPUs)",
            f"busy, {r.threads} then following",
        ],
    )
    print(
        "(busy: the share of its images/s alone a loop keeps beside one CPU-bound process; "
        f"OpenMP wait: {r.wait}; medians, the phases alternating)"
    )


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
