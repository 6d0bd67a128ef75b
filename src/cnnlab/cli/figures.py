"""`cnnlab featuremaps`, `cnnlab samples` and `cnnlab mistakes`: look inside a model and its data.

    cnnlab featuremaps runs/<run> --index 7
    cnnlab samples --dataset fashion-mnist
    cnnlab mistakes runs/<run>

Each prints the path of the PNG it wrote (--out FILE, else a descriptive name in the run folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnlab.data.splits import Split


from cnnlab.cli.common import (
    add_data_dir,
    add_device,
    add_figure_out,
    add_run,
    add_test_subset,
    int_in,
    non_negative_int,
    print_table,
    runtime_for,
    save_figure_to,
    seed_int,
)
from cnnlab.data import DatasetSpec, get_dataset, list_datasets
from cnnlab.data.registry import FolderOptions, folder_path, is_folder_dataset
from cnnlab.errors import ConfigError

SPLITS = ("train", "test")
MAX_GRID = 256  # images in one figure: more would be too small to see and slow to draw


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "featuremaps",
        help="draw the feature maps a trained CNN computes for one image",
        description="Draw one image and the feature maps after each conv block (for the "
        "tutorial CNN: 32 maps at 14x14, then 64 at 7x7), found by hooks on the model's layers.",
    )
    add_run(p)
    p.add_argument(
        "--index", type=non_negative_int, default=0, help="which image of the split (default: 0)"
    )
    add_split(p, default="test")
    p.add_argument(
        "--all-stages",
        action="store_true",
        help="draw every conv, ReLU and pooling output, not only each block's last "
        "(default: block outputs only)",
    )
    add_data_dir(p)
    add_figure_out(p, "featuremaps-<split>-<index>.png")
    p.set_defaults(handler=run_featuremaps)

    p = subparsers.add_parser("samples", help="draw a grid of dataset images with their labels")
    p.add_argument(
        "--dataset",
        default="mnist",
        help=f"one of {', '.join(list_datasets())}, or folder:PATH (default: mnist)",
    )
    add_split(p, default="train")
    p.add_argument(
        "--count",
        type=int_in(1, MAX_GRID),
        default=32,
        help=f"how many images to draw, 1-{MAX_GRID} (default: 32)",
    )
    p.add_argument(
        "--seed",
        type=seed_int,
        help="draw a random selection with this seed (default: the first COUNT images)",
    )
    add_data_dir(p)
    add_figure_out(p, "samples-<dataset>-<split>.png")
    p.set_defaults(handler=run_samples)

    p = subparsers.add_parser(
        "mistakes",
        help="draw the test images a trained model gets wrong",
        description="Draw misclassified test images, each with its true label, the predicted "
        "label and the model's confidence (softmax probability) in it.",
    )
    add_run(p)
    p.add_argument(
        "--count",
        type=int_in(1, MAX_GRID),
        default=32,
        help=f"at most this many images, 1-{MAX_GRID} (default: 32)",
    )
    p.add_argument(
        "--order",
        choices=("confidence", "index"),
        default="confidence",
        help="most confident mistakes first, or in test-set order (default: confidence)",
    )
    add_test_subset(p, "what the run was evaluated on")
    add_device(p)
    add_data_dir(p)
    add_figure_out(p, "mistakes.png")
    p.set_defaults(handler=run_mistakes)


def add_split(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--split", choices=SPLITS, default=default, help=f"which split (default: {default})"
    )


def dataset_split(spec: DatasetSpec, root: Path, split: str) -> Split:
    from cnnlab.data.sources import load_dataset

    train, test = load_dataset(spec, root)
    return train if split == "train" else test


def run_featuremaps(args: argparse.Namespace) -> int:
    from cnnlab.data.preprocess import to_model_input
    from cnnlab.run import run_data_location
    from cnnlab.runfiles import load_run
    from cnnlab.teach.featuremaps import block_outputs, capture_feature_maps, require_conv_layers
    from cnnlab.viz.tutorial import feature_maps_figure

    run = load_run(args.run)
    require_conv_layers(run.model, run.model_config.name)
    spec = run.dataset
    split = dataset_split(spec, run_data_location(run.config, args.data_dir).root, args.split)
    if args.index >= len(split):
        raise ConfigError(
            f"--index {args.index} is out of range: the {spec.name} {args.split} split has "
            f"{len(split):,} images (0..{len(split) - 1})"
        )
    image = split.gather(slice(args.index, args.index + 1))
    x = to_model_input(image, run.normalization)  # (1, C, H, W)
    maps = capture_feature_maps(run.model, x)
    stages = maps.stages if args.all_stages else block_outputs(maps)
    probs = maps.logits.softmax(dim=1)[0]
    predicted = int(probs.argmax())
    label = spec.classes[int(split.labels[args.index])]
    verdict = f"label {label}, predicted {spec.classes[predicted]} ({float(probs[predicted]):.1%})"
    title = f"Feature maps of {run.model_config.name}: {spec.name} {args.split} image {args.index}"
    fig = feature_maps_figure(maps, stages, f"{title}\n{verdict}", input_label="input image")
    name = f"featuremaps-{args.split}-{args.index}{'-all' if args.all_stages else ''}.png"
    path = save_figure_to(fig, args.out, run.run_dir, name)
    print(f"{spec.name} {args.split} image {args.index}: {verdict}")
    print_table(
        [["input", "input", "x".join(map(str, x.shape[1:]))]]
        + [[s.name, s.kind, "x".join(map(str, s.tensor.shape[1:]))] for s in stages],
        ["stage", "kind", "shape (CxHxW)"],
    )
    print(f"Wrote {path}")
    return 0


def run_samples(args: argparse.Namespace) -> int:
    import torch

    from cnnlab.data.folder_splits import folder_splits
    from cnnlab.data.sources import locate_data
    from cnnlab.viz.tutorial import sample_grid

    if is_folder_dataset(args.dataset):  # read with the default settings, as train would
        splits = folder_splits(FolderOptions(folder_path(args.dataset)))
        spec, split = splits.spec, splits.train if args.split == "train" else splits.test
    else:
        spec = get_dataset(args.dataset)
        split = dataset_split(spec, locate_data(spec, args.data_dir).root, args.split)
    count = min(args.count, len(split))
    if args.seed is None and spec.folder is not None:  # a folder's files come in class order
        index = torch.arange(count) * len(split) // count
        which = f"{count} spread evenly"
    elif args.seed is None:
        index = torch.arange(count)
        which = f"first {count}"
    else:
        generator = torch.Generator().manual_seed(args.seed)
        index = torch.randperm(len(split), generator=generator)[:count].sort().values
        which = f"{count} random (seed {args.seed})"
    labels = [f"{spec.classes[int(y)]}" for y in split.labels[index]]
    title = f"{spec.name} {args.split} images: {which} of {len(split):,}, titled with their label"
    fig = sample_grid(split.gather(index), labels, title)
    name = "folder-" + Path(spec.folder.path).name if spec.folder else spec.name
    path = save_figure_to(fig, args.out, None, f"samples-{name}-{args.split}.png")
    print(f"Drew {count} {spec.name} {args.split} images ({which} of {len(split):,})")
    print(f"Wrote {path}")
    return 0


def run_mistakes(args: argparse.Namespace) -> int:
    from cnnlab.metrics import evaluate_run
    from cnnlab.run import run_data_location, run_splits
    from cnnlab.runfiles import load_run
    from cnnlab.viz.tutorial import mistakes_figure

    runtime = runtime_for(args.device, "auto")
    run = load_run(args.run, runtime.device)
    spec = run.dataset
    data = run_data_location(run.config, args.data_dir)
    test = run_splits(run, data, args.test_subset).test
    report = evaluate_run(run, test, runtime)
    labels = test.labels.cpu()
    wrong = (report.predictions != labels).nonzero().flatten()
    if args.order == "confidence":
        wrong = wrong[report.confidences[wrong].argsort(descending=True, stable=True)]
    shown = wrong[: args.count]
    names = spec.classes
    true_names = [names[int(labels[i])] for i in shown]
    pred_names = [names[int(report.predictions[i])] for i in shown]
    confidences = [float(report.confidences[i]) for i in shown]
    order = "most confident first" if args.order == "confidence" else "in test-set order"
    title = (
        f"Mistakes of {run.model_config.name} on {spec.name} test: {len(wrong):,} of "
        f"{len(test):,} wrong ({len(wrong) / max(len(test), 1):.2%})"
    )
    if len(shown):
        title += f"; {len(shown)} shown, {order}"
    fig = mistakes_figure(
        test.gather(shown), shown.tolist(), true_names, pred_names, confidences, title
    )
    path = save_figure_to(fig, args.out, run.run_dir, "mistakes.png")
    print(
        f"{len(wrong):,} of {len(test):,} test images are misclassified "
        f"(accuracy {report.accuracy:.2%})"
    )
    if len(shown):
        print(f"Showing {len(shown)}, {order}:")
        print_table(
            [
                [int(i), t, p, f"{c:.1%}"]
                for i, t, p, c in zip(shown, true_names, pred_names, confidences)
            ],
            ["index", "true", "predicted", "confidence"],
        )
    print(f"Wrote {path}")
    return 0
