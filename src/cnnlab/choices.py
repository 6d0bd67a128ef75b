"""The names and limits a recipe and the command line can use, importable without PyTorch.

`cnnlab --help` and every `cnnlab COMMAND --help` build their text from these, so they answer
without loading PyTorch; the modules that act on them (`config`, `runtime`, `models`) import them
from here, so each name is defined once.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
# The models cnnlab.models registers; registering any other name is refused there.
MODEL_NAMES = ("cnn", "mlp", "resnet", "speedrun")
MAX_OPTION_INT = 1 << 16  # widths and hidden sizes; the parameter cap in models bounds the rest
MAX_CLASSES = 100_000
PREDICT_BATCH_SIZE = 256  # images per forward pass of `cnnlab predict`
PEER_TIMEOUT = 600.0  # seconds a training process waits for the others before giving up
