"""`cnnlab eval` and `cnnlab filters`: look at a trained run."""

from __future__ import annotations

import argparse
import json

from cnnlab.cli.common import (
    add_data_dir,
    add_device,
    add_figure_out,
    add_run,
    add_test_subset,
    print_table,
    runtime_for,
    save_figure_to,
)
from cnnlab.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a trained run: accuracy, per class, confusion")
    add_run(p)
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="which split to evaluate (default: test)",
    )
    add_test_subset(p, "what the run used")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_device(p)
    add_data_dir(p)
    add_figure_out(p, "confusion.png")
    p.set_defaults(handler=run_eval)

    p = subparsers.add_parser("filters", help="draw a conv layer's learned filters")
    add_run(p)
    p.add_argument("--layer", default=None, help="conv layer to draw (default: the first)")
    add_figure_out(p, "filters-<layer>.png")
    p.set_defaults(handler=run_filters)


def run_eval(args: argparse.Namespace) -> int:
    from cnnlab.metrics import evaluate_run, most_confused
    from cnnlab.run import run_data_location, run_splits
    from cnnlab.runfiles import load_run
    from cnnlab.viz import training as viz

    runtime = runtime_for(args.device, "auto")
    run = load_run(args.run, runtime.device)
    spec = run.dataset
    splits = run_splits(run, run_data_location(run.config, args.data_dir), args.test_subset)
    if args.split == "val" and splits.val is None:
        raise ConfigError(f"{run.run_dir} was trained without --val-size, so it has no val split")
    split = splits.val if args.split == "val" else splits.test
    report = evaluate_run(run, split, runtime)
    names = list(spec.classes)
    name = "confusion.png" if args.split == "test" else "confusion-val.png"
    title = f"Confusion matrix, {spec.name} {args.split} ({len(split):,} images)"
    fig = viz.confusion_figure(report.confusion, names, title)
    path = save_figure_to(fig, args.out, run.run_dir, name)
    if args.json:
        print(
            json.dumps(report.to_json(names) | {"split": args.split, "figure": str(path)}, indent=2)
        )
        return 0
    label = "Test" if args.split == "test" else "Validation"
    print(
        f"{label} accuracy: {report.accuracy:.3f}  ({report.accuracy:.2%} of {len(split):,} images)"
    )
    print("\nPer-class accuracy:")
    counts = report.confusion.sum(dim=1)
    print_table(
        [[n, f"{a:.2%}", int(c)] for n, a, c in zip(names, report.per_class_accuracy, counts)],
        ["class", "accuracy", "images"],
    )
    print("\nConfusion matrix (rows: true label, columns: predicted):")
    short = [n[:7] for n in names]
    print_table(
        [[short[i]] + row for i, row in enumerate(report.confusion.tolist())],
        ["true\\pred"] + short,
    )
    print("\nMost confused (true -> predicted):")
    for t, p, c in most_confused(report.confusion):
        print(f"  {names[t]} -> {names[p]}: {c}")
    print(f"\nWrote {path}")
    return 0


def run_filters(args: argparse.Namespace) -> int:
    from cnnlab.models import conv_layer_names
    from cnnlab.runfiles import load_run
    from cnnlab.viz import training as viz

    run = load_run(args.run)
    convs = conv_layer_names(run.model)
    if not convs:
        raise ConfigError(f"model {run.model_config.name!r} has no convolutional layers to draw")
    layer = args.layer or convs[0]
    if layer not in convs:
        raise ConfigError(f"unknown layer {layer!r}; valid layers: {', '.join(convs)}")
    weight = run.model.get_submodule(layer).weight  # (out, in, k, k)
    out_ch, in_ch = weight.shape[:2]
    if in_ch == 1:
        fig = viz.filter_grid(weight, f"Learned filters, {layer}")
    else:
        fig = viz.kernel_mosaic(
            weight, f"Learned filters, {layer}: {out_ch} filters x {in_ch} input channels"
        )
    path = save_figure_to(fig, args.out, run.run_dir, f"filters-{layer}.png")
    print(f"Wrote {path}")
    return 0
