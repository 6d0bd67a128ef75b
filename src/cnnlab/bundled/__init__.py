"""The model shipped with cnnlab, for `cnnlab predict` without `--run`.

It is an ordinary run folder inside the package (config.json + model.safetensors):

    >>> run = load_run(bundled_run_dir())
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.errors import CheckpointError

BUNDLED_RUN = Path(__file__).parent / "mnist-cnn"


def bundled_run_dir() -> Path:
    """The bundled run folder; a `CheckpointError` when this installation has no model in it."""
    if not (BUNDLED_RUN / "model.safetensors").is_file():
        raise CheckpointError(
            f"no bundled model in {BUNDLED_RUN} (this installation ships none); pass --run RUN "
            "with a run folder from `cnnlab train`"
        )
    return BUNDLED_RUN
