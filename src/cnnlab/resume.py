"""Resuming a run: its recorded recipe, its checkpoint, and the state its folder is in.

    >>> resume_run(Path("runs/demo"), runtime, epochs=10)   # extend to 10 epochs, same data

The folder is locked for the whole resume. A run whose last epoch's weights or metrics were not
all written (a full disk, a kill) gets them back from its checkpoint; a run that stopped before
its first epoch ended is pointed at the command that starts it again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cnnlab import checkpoint, runfolder
from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from cnnlab.config import TrainConfig
from cnnlab.data import folder_splits as folders
from cnnlab.data.identity import describe
from cnnlab.data.sources import DataLocation
from cnnlab.data.splits import DataSplits
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.files import save_safetensors, write_json
from cnnlab.phases import Phases
from cnnlab.run import as_location, load_splits, run_data_location, save_epoch, write_run_figures
from cnnlab.runfiles import not_started_message, read_metrics, restart_command, write_metrics
from cnnlab.runtime import Runtime, runtime_differences
from cnnlab.train import EpochEnd, FitResult, fit


def resume_config(run_dir: Path, epochs: int | None = None) -> TrainConfig:
    """The recorded recipe of `run_dir`, with the epoch count extended to `epochs` if given."""
    return recorded_recipe(checkpoint.read_run_config(Path(run_dir)), run_dir, epochs)


def recorded_recipe(recorded: dict, run_dir: Path, epochs: int | None) -> TrainConfig:
    if not isinstance(recorded.get("train"), dict):
        raise CheckpointError(f"{run_dir}: config.json has no valid 'train' section")
    config = TrainConfig.from_json(recorded["train"])  # checked by read_run_config
    if epochs is not None:
        config = TrainConfig.from_json(config.to_json(), epochs=epochs)
    return config


def resume_run(
    run_dir: Path,
    runtime: Runtime,
    data: DataLocation | Path | None = None,
    epochs: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    on_saved: Callable[[int], None] | None = None,
    phases: Phases | None = None,
) -> FitResult:
    """Continue `run_dir` from its last completed epoch (to `epochs` in all, if given), on the
    data it was trained with: `data`, else the root it recorded (the files' fingerprint is checked).
    `phases` gets where the seconds went, as for `cnnlab.run.train_run`.

    The run folder is locked first. A finished run whose weights or metrics were not all
    written (a full disk, a kill) gets them back from its checkpoint and is not trained.
    """
    phases = phases if phases is not None else Phases()
    run_dir = Path(run_dir)
    with runfolder.locked_run(run_dir):
        recorded, config, state = resume_plan(run_dir, epochs)
        if config.epochs == state.epochs_done:
            return restore_from_checkpoint(run_dir, recorded, state, log)
        with phases("data"):
            location = (
                as_location(data) if data is not None else run_data_location(recorded, log=log)
            )
            splits = resumed_splits(run_dir, config, state, recorded, location, log, progress)
        start_resume(run_dir, recorded, config, state, runtime, location, splits, log)
        save = resume_saver(run_dir, on_saved)
        result = fit(config, splits, runtime, state, save, log, progress, phases=phases)
        with phases("figures"):
            write_run_figures(run_dir, result)
    return result


def resume_plan(run_dir: Path, epochs: int | None):
    """(config.json, recipe, checkpoint) of a run that can be resumed, else the refusal. A recipe
    whose epochs are all done means that only the last epoch's files are to be restored."""
    recorded = checkpoint.read_run_config(run_dir)
    config = recorded_recipe(recorded, run_dir, epochs)
    state = load_state_to_resume(run_dir)
    if config.epochs < state.epochs_done:
        raise ConfigError(
            f"--epochs {config.epochs} is fewer than the {state.epochs_done} epochs already done"
        )
    if config.epochs == state.epochs_done and not needs_restore(run_dir, state):
        raise ConfigError(
            f"{run_dir} already finished its {state.epochs_done} epochs; pass --epochs N "
            f"(more than {state.epochs_done}) to train it further"
        )
    return recorded, config, state


def resumed_splits(run_dir, config, state, recorded, location, log, progress) -> DataSplits:
    """The run's splits, checked to be the data it trained on."""
    splits = load_splits(config, location, recorded.get("data"), log, progress)
    if splits.folder is not None:
        folders.check_assignment(run_dir, splits)
    check_steps(run_dir, state, splits, config)
    return splits


def start_resume(run_dir, recorded, config, state, runtime, location, splits, log, job=None):
    """Say what resumes and what differs from the run's start; record the recipe and the runtime
    (with `job`'s entries: a torchrun job's id) that the last epochs and the test run with."""
    log(f"Run folder: {run_dir}")
    if splits.folder is None:
        log(f"Data: {location.describe()}, {describe(list(splits.files))}")
    on = f" on {runtime.world_size} processes" if runtime.world_size > 1 else ""
    log(f"Resuming after epoch {state.epochs_done} of {config.epochs}{on}")
    differences = runtime_differences(recorded, runtime)
    followed = [str(m["epoch"]) for m in state.metrics if m.get("thread_changes")]
    if followed:
        differences.append(f"the thread count followed the load in epoch {', '.join(followed)}")
    if differences:
        log(
            f"Note: {'; '.join(differences)}: the result will not be bit-identical to an "
            f"uninterrupted run"
        )
    recorded["train"] = config.to_json()
    recorded["runtime"] = runtime.to_json() | (job or {})
    write_json(run_dir / CONFIG_FILE, recorded)


def resume_saver(run_dir: Path, on_saved: Callable[[int], None] | None = None):
    """`fit`'s per-epoch hook for a resumed run: each epoch saved whole, signals deferred."""

    def save(end: EpochEnd) -> None:
        with runfolder.deferred_signals():
            save_epoch(run_dir, end)
        if on_saved is not None:
            on_saved(len(end.metrics))

    return save


def load_state_to_resume(run_dir: Path) -> checkpoint.TrainingState:
    """The checkpoint, or a message that says what the folder holds and what to run instead."""
    if not (run_dir / CHECKPOINT_FILE).exists():
        if not (run_dir / WEIGHTS_FILE).exists() and not (run_dir / METRICS_FILE).exists():
            raise CheckpointError(not_started_message(run_dir))
        restart = restart_command(run_dir)
        raise CheckpointError(
            f"{run_dir}: no {CHECKPOINT_FILE}, so there is nothing to resume; its weights can "
            f"still be evaluated, and to train it again: {restart}"
        )
    return checkpoint.load_training_state(run_dir)


def result_from_checkpoint(run_dir: Path, recorded: dict, state) -> FitResult:
    """A finished run's result, rebuilt from its checkpoint."""
    _, model = checkpoint.model_from_config(recorded, run_dir / CONFIG_FILE)
    checkpoint.load_weights(model, state.model_state, run_dir / CHECKPOINT_FILE)
    last = state.metrics[-1]
    return FitResult(
        model,
        state.metrics,
        last.get("test_accuracy", float("nan")),
        last.get("test_loss", float("nan")),
        state.step_losses,
    )


def check_steps(run_dir: Path, state, splits: DataSplits, config: TrainConfig) -> None:
    """The checkpoint's step count must be what this data gives, or the data is not the run's."""
    steps = -(-len(splits.train) // config.batch_size)
    if state.global_step != state.epochs_done * steps:
        raise CheckpointError(
            f"{run_dir / CHECKPOINT_FILE}: {state.global_step} steps in {state.epochs_done} "
            f"epochs, but this data gives {steps} steps an epoch: it is not the data the run "
            f"was trained on"
        )


def needs_restore(run_dir: Path, state) -> bool:
    """Files of the last epoch missing beside its checkpoint (it is always written first)."""
    if not (run_dir / WEIGHTS_FILE).exists():
        return True
    try:
        return len(read_metrics(run_dir)) != state.epochs_done
    except CheckpointError:
        return True


def restore_from_checkpoint(run_dir: Path, recorded: dict, state, log) -> FitResult:
    """Write model.safetensors, metrics.jsonl and the figures from the checkpoint."""
    result = result_from_checkpoint(run_dir, recorded, state)
    with runfolder.deferred_signals():
        save_safetensors(run_dir / WEIGHTS_FILE, state.model_state)
        write_metrics(run_dir, state.metrics)
    write_run_figures(run_dir, result)
    log(
        f"Restored {WEIGHTS_FILE} and {METRICS_FILE} of {run_dir} from {CHECKPOINT_FILE} "
        f"(epoch {state.epochs_done} of {state.epochs_done})"
    )
    return result
