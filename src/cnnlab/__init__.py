"""cnnlab's public API: convolutional neural networks on small image datasets.

>>> import cnnlab
>>> model = cnnlab.create_model(cnnlab.ModelConfig("cnn"))
>>> cnnlab.count_parameters(model)
50378
"""

__version__ = "0.1.0"

from cnnlab.config import TrainConfig, preset_config  # noqa: E402
from cnnlab.data import get_dataset, list_datasets
from cnnlab.data.loader import DeviceLoader
from cnnlab.data.sources import load_dataset, resolve_data_root
from cnnlab.data.splits import make_splits
from cnnlab.errors import (  # noqa: E402
    CheckpointError,
    CnnlabError,
    ConfigError,
    DataError,
    EvaluationError,
    TrainingError,
)
from cnnlab.metrics import confusion_matrix, evaluate
from cnnlab.models import (  # noqa: E402
    ModelConfig,
    count_parameters,
    create_model,
    list_models,
    register_model,
)
from cnnlab.run import load_run
from cnnlab.runtime import resolve_runtime, seed_everything  # noqa: E402
from cnnlab.train import fit, train_one_epoch  # noqa: E402

__all__ = [
    "CheckpointError",
    "CnnlabError",
    "ConfigError",
    "DataError",
    "DeviceLoader",
    "EvaluationError",
    "ModelConfig",
    "TrainConfig",
    "TrainingError",
    "confusion_matrix",
    "count_parameters",
    "create_model",
    "evaluate",
    "fit",
    "get_dataset",
    "list_datasets",
    "list_models",
    "load_dataset",
    "load_run",
    "make_splits",
    "preset_config",
    "register_model",
    "resolve_data_root",
    "resolve_runtime",
    "seed_everything",
    "train_one_epoch",
]
