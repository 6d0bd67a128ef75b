"""cnnlab: convolutional neural networks on small image datasets.

>>> import cnnlab
>>> model = cnnlab.create_model(cnnlab.ModelConfig("cnn"))
>>> cnnlab.count_parameters(model)
50378

Importing cnnlab is cheap and changes nothing global: the names below are loaded (with PyTorch)
on first use, so `cnnlab --help` starts at once.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "TrainConfig": "cnnlab.config",
    "preset_config": "cnnlab.config",
    "get_dataset": "cnnlab.data",
    "list_datasets": "cnnlab.data",
    "load_dataset": "cnnlab.data.sources",
    "resolve_data_root": "cnnlab.data.sources",
    "make_splits": "cnnlab.data.splits",
    "DeviceLoader": "cnnlab.data.loader",
    "CheckpointError": "cnnlab.errors",
    "CnnlabError": "cnnlab.errors",
    "ConfigError": "cnnlab.errors",
    "DataError": "cnnlab.errors",
    "TrainingError": "cnnlab.errors",
    "confusion_matrix": "cnnlab.metrics",
    "evaluate": "cnnlab.metrics",
    "ModelConfig": "cnnlab.models",
    "count_parameters": "cnnlab.models",
    "create_model": "cnnlab.models",
    "list_models": "cnnlab.models",
    "register_model": "cnnlab.models",
    "load_run": "cnnlab.runfiles",
    "configure_process": "cnnlab.runtime",
    "resolve_runtime": "cnnlab.runtime",
    "seed_everything": "cnnlab.runtime",
    "fit": "cnnlab.train",
    "train_one_epoch": "cnnlab.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
