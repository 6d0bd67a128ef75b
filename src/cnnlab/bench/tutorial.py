"""The tutorial's own program, run as the tutorial writes it: the baseline every benchmark beats.

torchvision's MNIST with `ToTensor`, a DataLoader of batch 64 (`num_workers=0`), the cnn, Adam
1e-3, fp32, `loss.item()` every step; each batch is moved to the device being measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from cnnlab.bench.timing import Clock, timed
from cnnlab.data import get_dataset
from cnnlab.models import ModelConfig, create_model
from cnnlab.runtime import seed_everything

TUTORIAL_BATCH = 64


def tutorial_loader(data_root: Path, train: bool):
    """The tutorial's data: torchvision's MNIST with `ToTensor`, batch 64, `num_workers=0`."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    data = datasets.MNIST(
        root=str(data_root), train=train, download=False, transform=transforms.ToTensor()
    )
    return DataLoader(data, batch_size=TUTORIAL_BATCH, shuffle=train)


def tutorial_model(device: torch.device):
    """The tutorial's model, loss and optimizer on `device`: cnn, cross-entropy, Adam 1e-3, fp32."""
    model = create_model(ModelConfig.for_dataset("cnn", get_dataset("mnist"))).to(device)
    return model, torch.nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-3)


def tutorial_steps(model, criterion, optimizer, loader, device, steps: int | None = None) -> int:
    """The tutorial's training loop as it is written (each batch moved to `device`), for `steps`
    batches (None: one epoch). Returns the number of images it trained on."""
    model.train()
    epoch_loss, images = 0.0, 0
    for step, (X, y) in enumerate(loader):
        if step == steps:
            break
        X, y = X.to(device), y.to(device)
        optimizer.zero_grad()
        loss = criterion(model(X), y)
        loss.backward()
        optimizer.step()
        epoch_loss += loss.item()
        images += len(y)
    return images


def tutorial_loop(
    data_root: Path, steps: int, device: torch.device, clock: Clock = time.perf_counter
) -> Callable[[], float]:
    """A function that runs `steps` of the tutorial's loop on `device` and returns images/s."""
    loader = tutorial_loader(data_root, train=True)
    model, criterion, optimizer = tutorial_model(device)

    def run() -> float:
        images, seconds = timed(
            lambda: tutorial_steps(model, criterion, optimizer, loader, device, steps),
            device,
            clock,
        )
        return images / seconds

    return run


def tutorial_training(data_root: Path, seed: int, device: torch.device, epochs: int = 5) -> float:
    """The tutorial's whole program (fp32, DataLoader, Adam 1e-3, batch 64) on `device`: its
    test accuracy."""
    seed_everything(seed)
    train_loader = tutorial_loader(data_root, train=True)
    model, criterion, optimizer = tutorial_model(device)
    for _ in range(epochs):
        tutorial_steps(model, criterion, optimizer, train_loader, device)
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for X, y in tutorial_loader(data_root, train=False):
            X, y = X.to(device), y.to(device)
            correct += (model(X).argmax(dim=1) == y).sum().item()
            total += len(y)
    return correct / total
