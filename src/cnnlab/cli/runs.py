"""`cnnlab eval` and `cnnlab filters`: look at a trained run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cnnlab import viz
from cnnlab.checkpoint import load_run
from cnnlab.cli.common import add_data_dir, add_figure_out, figure_path, positive_int, print_table
from cnnlab.data import get_dataset, load_dataset, make_splits, resolve_data_root
from cnnlab.errors import ConfigError
from cnnlab.evaluate import evaluate, most_confused
from cnnlab.models import conv_layer_names
from cnnlab.preprocess import Normalization
from cnnlab.runtime import resolve_runtime


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a trained run: accuracy, per class, confusion")
    p.add_argument("run", type=Path, help="a run folder, or a .safetensors file inside one")
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="which split to evaluate (default: test)",
    )
    p.add_argument(
        "--test-subset",
        type=positive_int,
        help="evaluate the first N test images (default: what the run used)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    add_data_dir(p)
    add_figure_out(p, "confusion.png")
    p.set_defaults(handler=run_eval)

    p = subparsers.add_parser("filters", help="draw a conv layer's learned filters")
    p.add_argument("run", type=Path, help="a run folder, or a .safetensors file inside one")
    p.add_argument("--layer", default=None, help="conv layer to draw (default: the first)")
    add_figure_out(p, "filters-<layer>.png")
    p.set_defaults(handler=run_filters)


def run_eval(args: argparse.Namespace) -> int:
    runtime = resolve_runtime(args.device, "auto")
    run = load_run(args.run, runtime.device)
    recorded = run.config.get("runtime", {})
    channels_last = recorded.get("channels_last", False) and runtime.channels_last
    if channels_last:  # the layout the run trained with: the same bits as its own evaluation
        run.model.to(memory_format=torch.channels_last)
    train_cfg = run.config.get("train", {})
    spec = get_dataset(run.config.get("dataset", {}).get("name", train_cfg.get("dataset", "mnist")))
    train, test = load_dataset(spec, resolve_data_root(args.data_dir))
    test_subset = args.test_subset or train_cfg.get("test_subset")
    splits = make_splits(
        train,
        test,
        train_cfg.get("val_size", 0),
        None,
        test_subset,
        run.config.get("val_split_seed", 0),
    )
    if args.split == "val":
        if splits.val is None:
            raise ConfigError(
                f"{run.run_dir} was trained without --val-size, so it has no val split"
            )
        split = splits.val
    else:
        split = splits.test
    precision = recorded.get("precision", "fp32") if runtime.precision == "bf16" else "fp32"
    norm = Normalization.from_json(run.config.get("normalization"))
    report = evaluate(
        run.model,
        split.to(runtime.device),
        norm,
        1000,
        precision,
        channels_last,
    )
    names = list(spec.classes)
    name = "confusion.png" if args.split == "test" else "confusion-val.png"
    path = viz.save_figure(
        viz.confusion_figure(
            report.confusion,
            names,
            f"Confusion matrix, {spec.name} {args.split} ({len(split):,} images)",
        ),
        figure_path(args.out, run.run_dir, name),
    )
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
    path = viz.save_figure(fig, figure_path(args.out, run.run_dir, f"filters-{layer}.png"))
    print(f"Wrote {path}")
    return 0
