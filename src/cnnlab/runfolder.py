"""A run folder's life: checked before it is touched, trained beside it, swapped in whole.

A new run never writes its files among the files of the run it replaces. It trains in a hidden
staging folder inside the run folder, `.cnnlab-new-PID` (the same file system, so every move is
a rename), and moves its files up when its first epoch is saved: the previous run's config.json
goes first (from then on the folder describes no model), then its other cnnlab files, then the new
run's files come in with config.json last. So the previous run stays whole until the new one has
an epoch to show, and no file is ever left describing a model that no longer exists. Files that
cnnlab did not write are never touched.

One process at a time holds a run folder (`cnnlab.lock`). The next process to take the lock
clears what a killed one left: its staging folder (moved in if its swap had begun, else removed)
and its temporary files.

    >>> with new_run(Path("runs/demo"), config_json, overwrite=True) as stage:
    ...     fit(..., on_epoch=lambda end: stage.save(lambda folder: save_epoch(folder, end)))
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from cnnlab.errors import CheckpointError, ConfigError, OutputError, shell_command
from cnnlab.files import read_json, write_json
from cnnlab.lock import LOCK_FILE, lock_run_folder

EPOCH_FILES = (CHECKPOINT_FILE, WEIGHTS_FILE, METRICS_FILE, CONFIG_FILE)  # config.json last
DATA_FILES = ("splits.json", "skipped.txt")  # a folder dataset's: which files went where
DERIVED_FILES = (  # figures that describe the run's model: removed with it
    "loss.png",
    "filters.png",
    "filters-*.png",
    "confusion.png",
    "confusion-val.png",
    "mistakes.png",
    "featuremaps-*.png",
)
TEMP_FILE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]+\.tmp$")  # files.atomic_write_bytes' names


STAGING_PREFIX = ".cnnlab-new-"


def is_cnnlab_run(run_dir: Path) -> bool:
    """True if `run_dir` holds a config.json that cnnlab wrote (model, train and version)."""
    try:
        config = read_json(Path(run_dir) / CONFIG_FILE)
    except CheckpointError:
        return False
    versions = config.get("versions")
    return (
        isinstance(config.get("model"), dict)
        and isinstance(config.get("train"), dict)
        and isinstance(versions, dict)
        and "cnnlab" in versions
    )


def contents(run_dir: Path) -> list[str]:
    """The names in `run_dir` other than cnnlab's lock and temporary files."""
    return sorted(
        name
        for name in os.listdir(run_dir)
        if name != LOCK_FILE and not TEMP_FILE.match(name) and not name.startswith(STAGING_PREFIX)
    )


def check_target(run_dir: Path, overwrite: bool) -> None:
    """Refuse an output folder that cannot take a new run; nothing is written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output {run_dir} exists and is not a folder")
    if not run_dir.is_dir() or not contents(run_dir):
        return
    if not is_cnnlab_run(run_dir):
        raise ConfigError(
            f"run folder {run_dir} already exists, is not empty and holds no cnnlab run, so "
            f"--overwrite will not replace it either; choose another --out"
        )
    if not overwrite:
        resume = shell_command("cnnlab", "train", "--resume", os.path.abspath(run_dir))
        raise ConfigError(
            f"run folder {run_dir} already exists and is not empty; pass --overwrite to replace "
            f"its training files, or continue it with: {resume}"
        )


class Stage:
    """A new run: saved in its staging folder until its first epoch is swapped in, then in the
    run folder itself."""

    def __init__(self, run_dir: Path, staging: Path, config: dict):
        self.run_dir = run_dir
        self.staging = staging
        self.config = config  # config.json, written with the first epoch: no file describes
        self.swapped = False  # a model before it has an epoch

    def save(self, save_files: Callable[[Path], None]) -> None:
        """Save an epoch with `save_files(folder)`; the first one is then swapped in. Ctrl-C
        and SIGTERM wait until this is done, so an epoch is saved whole or not at all."""
        with deferred_signals():
            if self.swapped:
                save_files(self.run_dir)
                return
            write_json(self.staging / CONFIG_FILE, self.config)
            save_files(self.staging)
            swap_in(self.staging, self.run_dir)
            self.swapped = True


@contextlib.contextmanager
def new_run(
    run_dir: Path, config: dict, overwrite: bool = False, needed_bytes: int = 0
) -> Iterator[Stage]:
    """Lock `run_dir` (created if missing) and give a new run, described by `config` (its
    config.json), its staging folder; see above.

    On leaving, a run that saved no epoch leaves no trace: its staging folder is removed, and so
    is `run_dir` if this call created it.
    """
    run_dir = Path(run_dir)
    check_target(run_dir, overwrite)
    check_free_space(run_dir, needed_bytes)
    created = not run_dir.exists()
    make_folder(run_dir)
    stage = None
    try:
        with lock_run_folder(run_dir):
            try:
                clear_leftovers(run_dir)
                check_target(run_dir, overwrite)  # again: now no other process can change it
                check_writable(run_dir)
                staging = run_dir / f"{STAGING_PREFIX}{os.getpid()}"
                make_folder(staging)
                stage = Stage(run_dir, staging, config)
                yield stage
            finally:
                if stage is not None and not stage.swapped:
                    shutil.rmtree(stage.staging, ignore_errors=True)
    finally:
        if created and (stage is None or not stage.swapped):
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only if empty: nothing of anyone's is removed


@contextlib.contextmanager
def locked_run(run_dir: Path) -> Iterator[None]:
    """Hold an existing run folder's lock (to resume it); a killed run's leftovers are cleared."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    with lock_run_folder(run_dir):
        clear_leftovers(run_dir)
        yield


def swap_in(staging: Path, run_dir: Path) -> None:
    """Replace `run_dir`'s run by the one saved in `staging`, keeping every other file.

    Safe to call again after a kill at any point: what was moved is not moved twice.
    """
    (run_dir / CONFIG_FILE).unlink(missing_ok=True)  # from here on no model is described
    for name in os.listdir(run_dir):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in DERIVED_FILES):
            (run_dir / name).unlink(missing_ok=True)
    for name in DATA_FILES:  # before config.json moves in: they describe the new run's data
        if (staging / name).exists():
            os.replace(staging / name, run_dir / name)
        else:
            (run_dir / name).unlink(missing_ok=True)
    for name in EPOCH_FILES:  # the previous run's files of these names are replaced atomically
        if (staging / name).exists():
            os.replace(staging / name, run_dir / name)
    sync_folder(run_dir)
    shutil.rmtree(staging, ignore_errors=True)


def clear_leftovers(run_dir: Path) -> None:
    """Finish or remove what a killed process left; call with `run_dir`'s lock held.

    A staging folder whose run saved an epoch is moved in if the swap had begun (the folder's
    config.json is gone), else removed; temporary files of processes that are gone are removed.
    """
    for name in os.listdir(run_dir):
        staging = run_dir / name
        if not name.startswith(STAGING_PREFIX) or not staging.is_dir():
            continue
        saved = all((staging / n).exists() or (run_dir / n).exists() for n in EPOCH_FILES[:3])
        swap_begun = not (run_dir / CONFIG_FILE).exists()
        if saved and swap_begun and (staging / CONFIG_FILE).exists():
            with deferred_signals():
                swap_in(staging, run_dir)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    for name in os.listdir(run_dir):
        match = TEMP_FILE.match(name)
        if match and not process_alive(int(match.group(1))):
            (run_dir / name).unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a pid this system cannot have): leave it
    return True


def make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write to output folder {path}: {err.strerror or err}") from None


def check_writable(run_dir: Path) -> None:
    probe = run_dir / f".write-test.{os.getpid()}.00.tmp"
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"cannot write to output folder {run_dir}: {err.strerror or err}"
        ) from None


def check_free_space(run_dir: Path, needed_bytes: int) -> None:
    """Refuse to start when the disk cannot hold one epoch's files (twice, for the swap)."""
    existing = next((p for p in (run_dir, *run_dir.parents) if p.is_dir()), None)
    try:
        free = shutil.disk_usage(existing or ".").free
    except OSError:
        return
    if free < 2 * needed_bytes:
        raise OutputError(
            f"cannot write to output folder {run_dir}: {free:,} bytes free, an epoch's files "
            f"need about {needed_bytes:,}; free some space first"
        )


def sync_folder(path: Path) -> None:
    """Make the renames in `path` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive in the block take effect when it ends.

    Python runs signal handlers in the main thread whichever thread the signal reaches, so the
    handlers are swapped for one that only records the signal, and the recorded one is handed to
    the previous handler afterwards (raising KeyboardInterrupt, or the CLI's `Terminated`). Only
    possible in the main thread; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if pending:
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(pending[0])
