"""`cnnlab datasets` and `cnnlab models`: what is available."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_data_dir, print_table
from cnnlab.data import DATASETS, get_dataset, list_datasets


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "datasets", help="list the datasets and whether they are present locally"
    )
    add_data_dir(p)
    p.set_defaults(handler=run_datasets)

    p = subparsers.add_parser("models", help="list the models with their parameter counts")
    p.add_argument(
        "--dataset",
        default="mnist",
        help="count parameters for this dataset's input and classes (default: mnist)",
    )
    p.set_defaults(handler=run_models)


def run_datasets(args: argparse.Namespace) -> int:
    from cnnlab.data.sources import is_present, locate_data, resolve_data_root

    rows = []
    for name in list_datasets():
        spec = DATASETS[name]
        location = locate_data(spec, args.data_dir)
        rows.append(
            [
                name,
                "x".join(map(str, spec.shape)),
                spec.num_classes,
                f"{spec.train_size:,}",
                f"{spec.test_size:,}",
                location.origin if is_present(spec, location.root) else "no",
                spec.description,
            ]
        )
    print(f"Data root: {resolve_data_root(args.data_dir)} (then, for mnist, the packaged copy)")
    print_table(rows, ["name", "shape", "classes", "train", "test", "found in", "description"])
    print(
        "\nYour own images: --dataset folder:PATH, where PATH holds one folder of images per "
        "class\n(PATH/<class>/<image>), or PATH/train/<class>/... and PATH/test/<class>/... "
        "(optionally PATH/val/).\nClass names are the folder names; without test/, a seeded "
        "10% of each class is held out for testing."
    )
    return 0


def run_models(args: argparse.Namespace) -> int:
    from cnnlab.models import (
        ModelConfig,
        count_parameters,
        create_model,
        get_model_entry,
        list_models,
    )

    spec = get_dataset(args.dataset)
    rows = []
    for name in list_models():
        model = create_model(ModelConfig.for_dataset(name, spec))
        rows.append([name, f"{count_parameters(model):,}", get_model_entry(name).description])
    shape = "x".join(map(str, spec.shape))
    print(f"Parameters for {spec.name} input ({shape}, {spec.num_classes} classes):")
    print_table(rows, ["name", "parameters", "description"])
    return 0
