"""`cnnlab compare`: train the CNN and two MLPs with one recipe and the same seeds, and report.

    cnnlab compare --epochs 5 --seeds 3 --data-dir ../shared/data

The library side (training, summaries, results.json, the plot) is `cnnlab.teach.compare`.
"""

from __future__ import annotations

import argparse

from cnnlab.cli.common import (
    add_data_dir,
    add_device,
    add_subset_flags,
    int_in,
    path_arg,
    print_table,
    runtime_for,
    seed_int,
    setting_int,
)
from cnnlab.config import DEFAULTS, MAX_SEED, TrainConfig
from cnnlab.data import get_dataset, list_datasets
from cnnlab.errors import ConfigError

D = DEFAULTS  # the defaults the help texts state


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train the CNN, a same-size MLP and the tutorial's MLP; compare accuracy and time",
        description="Train three models with the same recipe and seeds: cnn (the tutorial's "
        "CNN), mlp-64 (an MLP with about the CNN's parameter count) and mlp-128 (the tutorial's "
        "MLP). Prints parameters, test accuracy and training time (mean ± std over seeds) and "
        "writes compare.png and results.json into the output folder.",
    )
    p.add_argument(
        "--epochs", type=setting_int("epochs"), default=D.epochs, help=f"(default: {D.epochs})"
    )
    p.add_argument(
        "--seeds",
        type=int_in(1, 1000),
        default=1,
        help="train each model with this many seeds and report mean ± std (default: 1)",
    )
    p.add_argument(
        "--seed",
        type=seed_int,
        default=D.seed,
        help=f"the first seed; --seeds N uses SEED..SEED+N-1 (default: {D.seed})",
    )
    p.add_argument(
        "--dataset",
        default=D.dataset,
        help=f"one of {', '.join(list_datasets())} (default: {D.dataset})",
    )
    add_subset_flags(p)
    p.add_argument(
        "--batch-size",
        type=setting_int("batch_size"),
        default=D.batch_size,
        help=f"(default: {D.batch_size})",
    )
    p.add_argument("--lr", type=float, default=D.lr, help=f"Adam learning rate (default: {D.lr:g})")
    add_device(p, precision=True)
    p.add_argument(
        "--out",
        type=path_arg,
        metavar="DIR",
        help="folder for compare.png and results.json (default: runs/compare-<date-time>)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier comparison in --out",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no epoch lines (one line per run still prints)"
    )
    add_data_dir(p)
    p.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from cnnlab.data.sources import locate_data
    from cnnlab.run import load_splits
    from cnnlab.teach import compare

    recipe = TrainConfig(
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        device=args.device,
        precision=args.precision,
    )
    if args.seed + args.seeds - 1 > MAX_SEED:
        raise ConfigError(
            f"--seed {args.seed} with --seeds {args.seeds} goes past the largest seed, {MAX_SEED}"
        )
    runtime = runtime_for(recipe.device, recipe.precision)
    out_dir = compare.prepare_compare_dir(args.out or compare.default_compare_dir(), args.overwrite)
    spec = get_dataset(recipe.dataset)
    shape = "x".join(map(str, spec.shape))
    print(f"Models ({spec.name} input {shape}, {spec.num_classes} classes):")
    print_table(
        [
            [c.label, f"{compare.parameter_count(c, recipe.dataset):,}", c.description]
            for c in compare.CONTENDERS
        ],
        ["model", "parameters", "description"],
    )
    for contender in compare.CONTENDERS:
        if contender.model == "mlp":
            hidden = contender.options["hidden"]
            formula = compare.mlp_parameter_formula(recipe.dataset, hidden)
            print(f"  {contender.label} (mlp, hidden {hidden}): {formula} parameters")
    print(
        f"Recipe: {compare.plural(recipe.epochs, 'epoch')}, {recipe.optimizer} lr {recipe.lr:g}, "
        f"batch {recipe.batch_size}; seeds {seeds_text(args.seed, args.seeds)}; "
        f"{runtime.device} {runtime.precision}"
    )
    splits = load_splits(recipe, locate_data(get_dataset(recipe.dataset), args.data_dir))
    print(f"Training on {len(splits.train):,} images, testing on {len(splits.test):,}")

    def save_partial(comparison: compare.Comparison) -> None:
        compare.write_results(out_dir, comparison, runtime, complete=False)

    result = compare.compare_models(
        recipe,
        splits,
        runtime,
        seeds=range(args.seed, args.seed + args.seeds),
        log=print,
        epoch_log=(lambda _line: None) if args.quiet else print,
        on_run=save_partial,
    )
    results_path = compare.write_results(out_dir, result, runtime, complete=True)
    figure = compare.save_comparison_figure(out_dir, result)
    seeds = len(result.seeds)
    spread = " (mean ± std)" if seeds > 1 else ""
    print(f"\nResults over {compare.plural(seeds, 'seed')}{spread}:")
    print_table(
        [
            [
                s.label,
                f"{s.parameters:,}",
                mean_std(s.accuracy_mean * 100, scaled(s.accuracy_std, 100), "%"),
                mean_std(s.seconds_mean, s.seconds_std, " s", digits=1),
            ]
            for s in result.summaries
        ],
        ["model", "parameters", "test accuracy", "training time"],
    )
    by_label = {s.label: s for s in result.summaries}
    cnn = by_label.get("cnn")
    if cnn is not None:
        for other in result.summaries:
            if other is not cnn:
                gap = (cnn.accuracy_mean - other.accuracy_mean) * 100
                ratio = cnn.parameters / other.parameters
                print(
                    f"cnn vs {other.label}: {gap:+.2f} percentage points of test accuracy "
                    f"with {ratio:.2f}x its parameters"
                )
    print(f"Wrote {results_path}")
    print(f"Wrote {figure}")
    return 0


def seeds_text(first: int, count: int) -> str:
    return str(first) if count == 1 else f"{first}..{first + count - 1}"


def mean_std(mean: float, std: float | None, unit: str, digits: int = 2) -> str:
    """'98.52 ± 0.10%' or, for one seed, '98.52%'."""
    if std is None:
        return f"{mean:.{digits}f}{unit}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}{unit}"


def scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor
