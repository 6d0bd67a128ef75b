"""The figure of `cnnlab predict --show`: each image, what the model saw, and its probabilities.

Built on `matplotlib.figure.Figure` directly (no pyplot, no global state):

    >>> fig = predictions_figure(predictions[:16], total=40, source="runs/demo")
    >>> save_png(fig, Path("predictions.png"))
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cnnlab.checkpoint import atomic_write_bytes
from cnnlab.predict import Prediction

MAX_SHOWN = 16  # images in one figure
MAX_BARS = 10  # classes in one bar chart (the most probable ones)
PREDICTED, OTHER = "#1f77b4", "#c7cdd4"


def predictions_figure(
    predictions: Sequence[Prediction], classes: Sequence[str], total: int, source: str
) -> Figure:
    """One panel group per prediction (at most `MAX_SHOWN`), two groups per row from 4 on;
    `total` is how many images were predicted, `source` names the model."""
    shown = list(predictions)[:MAX_SHOWN]
    columns = 1 if len(shown) <= 3 else 2
    rows = max(1, -(-len(shown) // columns))
    fig = Figure(figsize=(8.6 * columns, 2.35 * rows + 0.7), layout="constrained")
    ratios = ([1, 1, 1.9, 0.35] * columns)[:-1]  # a narrow gap between two groups
    grid = fig.add_gridspec(rows, 4 * columns - 1, width_ratios=ratios)
    for n, prediction in enumerate(shown):
        row, column = divmod(n, columns)
        axes = [fig.add_subplot(grid[row, 4 * column + i]) for i in range(3)]
        _draw_one(axes, prediction, classes)
    what = f"{total} image{'s' if total != 1 else ''}"
    if total > len(shown):
        what = f"first {len(shown)} of {total} images"
    fig.suptitle(f"Predictions of {source}: {what}", fontsize=12)
    return fig


def _draw_one(axes, prediction: Prediction, classes: Sequence[str]) -> None:
    original, seen, bars = axes
    if prediction.original is not None:
        picture = np.asarray(prediction.original)
        grey = picture.ndim == 2
        original.imshow(picture, cmap="gray" if grey else None, vmin=0, vmax=255)
    original.set_title(_short(Path(prediction.file).name), fontsize=9)
    channels, height, width = prediction.seen.shape
    model_view = prediction.seen[0] if channels == 1 else prediction.seen.transpose(1, 2, 0)
    seen.imshow(model_view, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    seen.set_title(f"model input {height}x{width}", fontsize=9)
    for ax in (original, seen):
        ax.set_xticks([])
        ax.set_yticks([])

    order = np.argsort(-prediction.probabilities, kind="stable")[:MAX_BARS]
    order = np.sort(order) if len(prediction.probabilities) <= MAX_BARS else order
    names = [_short(classes[i], 16) for i in order]
    values = prediction.probabilities[order]
    colours = [PREDICTED if i == prediction.index else OTHER for i in order]
    bars.barh(range(len(order)), values, color=colours, height=0.75)
    bars.set_yticks(range(len(order)), names, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, 1)
    bars.set_xticks([0, 0.5, 1], ["0", "0.5", "1"], fontsize=8)
    bars.tick_params(axis="y", length=0)
    for side in ("top", "right"):
        bars.spines[side].set_visible(False)
    title = f"{prediction.label}  ({prediction.confidence:.1%})"
    bars.set_title(title, fontsize=10, fontweight="bold", color=PREDICTED)


def _short(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def save_png(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Render `fig` to PNG in memory and write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
