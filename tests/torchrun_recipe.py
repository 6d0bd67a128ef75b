"""The recipe the data-parallel tests train, as a TrainConfig and as `cnnlab train` flags.

899 images in global batches of 62: 14 full batches and a last one of 31, which two processes
split 16 + 15 (the uneven last-batch rule is exercised every epoch). Plain SGD in fp32: Adam
would turn the rounding noise in the gradients of the biases before batch norm (whose true
gradient is zero) into full-size steps, in one process as in several.
"""

from __future__ import annotations

from cnnlab.config import TrainConfig

RECIPE = TrainConfig(
    epochs=3,
    batch_size=62,
    train_subset=899,
    test_subset=200,
    optimizer="sgd",
    lr=0.01,
    precision="fp32",
    sync_bn=True,
)

FLAGS = [
    "--epochs",
    "3",
    "--batch-size",
    "62",
    "--train-subset",
    "899",
    "--test-subset",
    "200",
    "--optimizer",
    "sgd",
    "--lr",
    "0.01",
    "--precision",
    "fp32",
    "--quiet",
]
SYNC_FLAGS = [*FLAGS, "--sync-bn"]

# Relative L2 distance (parameters and batch-norm statistics) between the weights of a 2-process
# --sync-bn run and a 1-process run of this recipe: measured 6e-5 (the processes add the
# batch-norm sums and the gradients in another order, and a few activations on the edge of a
# ReLU or max-pool then take the other side); without --sync-bn it is 5e-3, between two seeds
# 0.9. The bound leaves room for other CPUs' rounding and still fails without --sync-bn.
SYNC_TOLERANCE = 1e-3
