"""Figures as matplotlib `Figure` objects built without pyplot, and one atomic `save_figure`.

No backend is chosen and no global state is touched, so figures are safe to build in a notebook
or inside a web server's threads.

    cnnlab.viz.training   loss curve, filter grids, kernel mosaic, confusion matrix
    cnnlab.viz.tutorial   the tutorial's figures: feature maps, samples, mistakes, CNN vs MLP

>>> save_figure(training.filter_grid(model.conv1.weight, "Learned filters, conv1"), "filters.png")
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from cnnlab.files import atomic_write_bytes


def subplots(nrows: int = 1, ncols: int = 1, figsize=None, layout=None, **kwargs):
    """`(Figure, axes)` like pyplot's `subplots`, without registering the figure with pyplot."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Render to PNG in memory, then write atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
