"""CNN vs MLP: the same recipe and seeds for three models, measured, to test the tutorial's claim.

"A CNN typically outperforms an MLP of similar parameter count on image tasks." The three models:

    cnn        the tutorial's CNN                                  50,378 parameters
    mlp-64     mlp, hidden 64: 784*64+64 + 64*10+10                50,890 (similar to the CNN)
    mlp-128    mlp, hidden 128: the tutorial's 784 -> 128 -> 10   101,770

(The counts are computed from the models, never written down; these are MNIST's.)

    >>> splits = load_splits(TrainConfig(epochs=1), data_root)
    >>> result = compare_models(TrainConfig(epochs=1), splits, resolve_runtime(), seeds=[0, 1])
    >>> [(s.label, s.parameters, s.accuracy_mean) for s in result.summaries]
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cnnlab import files
from cnnlab.config import TrainConfig
from cnnlab.data import get_dataset
from cnnlab.data.splits import DataSplits
from cnnlab.models import ModelConfig, count_parameters, create_model
from cnnlab.runtime import Runtime
from cnnlab.stats import mean_std
from cnnlab.train import fit
from cnnlab.viz import save_figure
from cnnlab.viz.tutorial import comparison_figure

RESULTS_FILE = "results.json"
FIGURE_FILE = "compare.png"


@dataclass(frozen=True)
class Contender:
    label: str
    model: str
    options: dict = field(default_factory=dict)
    description: str = ""

    def model_config(self, dataset: str) -> ModelConfig:
        return ModelConfig.for_dataset(self.model, get_dataset(dataset), self.options)


CONTENDERS = (
    Contender("cnn", "cnn", {}, "the tutorial's CNN"),
    Contender("mlp-64", "mlp", {"hidden": 64}, "MLP, hidden 64: about the CNN's parameter count"),
    Contender(
        "mlp-128", "mlp", {"hidden": 128}, "MLP, hidden 128: the tutorial's 784 -> 128 -> 10"
    ),
)


def parameter_count(contender: Contender, dataset: str) -> int:
    return count_parameters(create_model(contender.model_config(dataset)))


def mlp_parameter_formula(dataset: str, hidden: int) -> str:
    """'784*64+64 + 64*10+10 = 50,890': the two linear layers' weights and biases."""
    spec = get_dataset(dataset)
    inputs = spec.shape[0] * spec.shape[1] * spec.shape[2]
    classes = spec.num_classes
    total = inputs * hidden + hidden + hidden * classes + classes
    return f"{inputs}*{hidden}+{hidden} + {hidden}*{classes}+{classes} = {total:,}"


@dataclass
class RunResult:
    label: str
    seed: int
    test_accuracy: float
    train_seconds: float  # the epochs' training time, without evaluation


@dataclass
class ModelSummary:
    label: str
    model: str
    options: dict
    parameters: int
    accuracies: list[float]  # one per seed
    seconds: list[float]

    @property
    def accuracy_mean(self) -> float:
        return mean_std(self.accuracies)[0]

    @property
    def accuracy_std(self) -> float | None:
        """Sample standard deviation over seeds; None for a single seed."""
        return mean_std(self.accuracies)[1]

    @property
    def seconds_mean(self) -> float:
        return mean_std(self.seconds)[0]

    @property
    def seconds_std(self) -> float | None:
        return mean_std(self.seconds)[1]

    def to_json(self) -> dict:
        return asdict(self) | {
            "accuracy_mean": self.accuracy_mean,
            "accuracy_std": self.accuracy_std,
            "seconds_mean": self.seconds_mean,
            "seconds_std": self.seconds_std,
        }


@dataclass
class Comparison:
    recipe: TrainConfig  # shared by every run; model and seed vary
    seeds: list[int]
    runs: list[RunResult]
    summaries: list[ModelSummary]

    def to_json(self, runtime: Runtime | None = None, complete: bool = True) -> dict:
        varied = ("model", "model_options", "seed")  # set per run, recorded in "models"/"runs"
        recipe = {k: v for k, v in self.recipe.to_json().items() if k not in varied}
        return {
            "complete": complete,
            "recipe": recipe,
            "seeds": self.seeds,
            "models": [s.to_json() for s in self.summaries],
            "runs": [asdict(r) for r in self.runs],
            "runtime": runtime.to_json() if runtime else None,
            "created": dt.datetime.now().isoformat(timespec="seconds"),
        }


def summarize(
    recipe: TrainConfig, seeds: Sequence[int], runs: Sequence[RunResult], contenders
) -> Comparison:
    summaries = []
    for contender in contenders:
        mine = [r for r in runs if r.label == contender.label]
        if not mine:
            continue
        summaries.append(
            ModelSummary(
                label=contender.label,
                model=contender.model,
                options=dict(contender.options),
                parameters=parameter_count(contender, recipe.dataset),
                accuracies=[r.test_accuracy for r in mine],
                seconds=[r.train_seconds for r in mine],
            )
        )
    return Comparison(recipe, list(seeds), list(runs), summaries)


def compare_models(
    recipe: TrainConfig,
    splits: DataSplits,
    runtime: Runtime,
    seeds: Sequence[int] = (0,),
    contenders: Sequence[Contender] = CONTENDERS,
    log: Callable[[str], None] = print,
    epoch_log: Callable[[str], None] | None = None,
    on_run: Callable[[Comparison], None] | None = None,
) -> Comparison:
    """Train every contender with `recipe` once per seed on the same `splits`; nothing is written.

    Seeds are the outer loop, so a slow-down of a shared machine falls on every model alike.
    `log` gets one line per run, `epoch_log` (default: `log`) the epoch lines; `on_run` receives
    the comparison so far after each run (e.g. to save partial results).
    """
    epoch_log = log if epoch_log is None else epoch_log
    runs: list[RunResult] = []
    for seed in seeds:
        for contender in contenders:
            config = replace(
                recipe, model=contender.model, model_options=dict(contender.options), seed=seed
            )
            result = fit(config, splits, runtime, log=epoch_log)
            runs.append(
                RunResult(
                    label=contender.label,
                    seed=seed,
                    test_accuracy=result.test_accuracy,
                    train_seconds=sum(m["seconds"] for m in result.metrics),
                )
            )
            log(
                f"{contender.label:<8} seed {seed}: test accuracy {result.test_accuracy:.4f}, "
                f"training {runs[-1].train_seconds:.1f} s"
            )
            if on_run is not None:
                on_run(summarize(recipe, seeds, runs, contenders))
    return summarize(recipe, seeds, runs, contenders)


def default_compare_dir(root: Path = Path("runs")) -> Path:
    return root / f"compare-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def write_results(
    out_dir: Path, comparison: Comparison, runtime: Runtime | None, complete: bool
) -> Path:
    path = Path(out_dir) / RESULTS_FILE
    files.write_json(path, comparison.to_json(runtime, complete))
    return path


def prepare_compare_dir(out_dir: Path, overwrite: bool = False) -> Path:
    """Create `out_dir`, as a run folder is created: a folder that is not empty is refused
    unless `overwrite`, which replaces only the comparison's own files."""
    refusal = (
        f"comparison folder {out_dir} already exists and is not empty; pass --overwrite to "
        f"replace its {RESULTS_FILE} and {FIGURE_FILE}, or choose another --out"
    )
    return files.prepare_output_dir(out_dir, (RESULTS_FILE, FIGURE_FILE), overwrite, refusal)


def comparison_title(comparison: Comparison) -> str:
    recipe = comparison.recipe
    images = f"{recipe.train_subset:,} training images" if recipe.train_subset else "full train set"
    seeds = len(comparison.seeds)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
    return (
        f"CNN vs MLP on {recipe.dataset}: {plural(recipe.epochs, 'epoch')}, "
        f"{recipe.optimizer} lr {recipe.lr:g}, batch {recipe.batch_size}, {images}, {spread}"
    )


def save_comparison_figure(out_dir: Path, comparison: Comparison) -> Path:
    fig = comparison_figure(
        [s.label for s in comparison.summaries],
        [s.parameters for s in comparison.summaries],
        [s.accuracies for s in comparison.summaries],
        [s.seconds for s in comparison.summaries],
        comparison_title(comparison),
    )
    return save_figure(fig, Path(out_dir) / FIGURE_FILE)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
