"""Figures that illustrate the tutorial: feature maps, sample images, mistakes, CNN vs MLP.

Pure functions that return matplotlib Figures; write them with `cnnlab.viz.save_figure`.

>>> maps = capture_feature_maps(model, x)                 # cnnlab.teach.featuremaps
>>> save_figure(feature_maps_figure(maps, block_outputs(maps), "Feature maps"), Path("maps.png"))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from cnnlab.stats import mean_std
from cnnlab.teach.featuremaps import FeatureMaps, Stage
from cnnlab.viz import subplots

TILE_INCHES = 1.35  # one image tile in the sample and mistake grids


def mosaic_columns(channels: int) -> int:
    """Columns of a square-ish mosaic: 6 for 32 maps, 8 for 64."""
    return math.ceil(math.sqrt(channels))


def stage_mosaic(tensor: torch.Tensor) -> torch.Tensor:
    """(C, H, W) maps -> one (H', W') image, each map scaled to its own min..max.

    Gaps and unused tiles are NaN, drawn in the colormap's 'bad' colour (white).
    """
    tiles = tensor.detach().float().cpu().unsqueeze(1)  # (C, 1, H, W)
    grid = make_grid(
        tiles,
        nrow=mosaic_columns(tiles.shape[0]),
        padding=1,
        normalize=True,
        scale_each=True,
        pad_value=float("nan"),
    )
    return grid[0]  # make_grid repeats one channel to three


def _show_input(ax, image: torch.Tensor) -> None:
    """(C, H, W) model input, scaled to its min..max: grey for one channel, colour for three."""
    image = image.detach().float().cpu()
    low, high = image.min(), image.max()
    image = (image - low) / (high - low).clamp(min=1e-8)
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image[:3].permute(1, 2, 0).numpy(), interpolation="nearest")


def feature_maps_figure(
    maps: FeatureMaps, stages: Sequence[Stage], title: str, input_label: str = "input"
) -> Figure:
    """The input, then one mosaic per stage, each titled with its name and shape (first image).

    Panels run four to a row; each mosaic is square-ish, so 7x7 and 28x28 maps get equal room.
    """
    panels = 1 + len(stages)
    columns = min(panels, 4)
    rows = math.ceil(panels / columns)
    fig, axes = subplots(
        rows,
        columns,
        figsize=(4.0 * columns, 4.4 * rows + 1.0),
        squeeze=False,
        layout="constrained",  # room for every title and label, rows never overlap
    )
    fig.get_layout_engine().set(h_pad=0.12)  # inches between rows: axis label, then next title
    ax_in = axes.flat[0]
    _show_input(ax_in, maps.input[0])
    channels, height, width = maps.input.shape[1:]
    ax_in.set_title(f"{input_label}\n{channels}x{height}x{width}", fontsize=12)
    ax_in.set_xlabel("x (pixels)")
    ax_in.set_ylabel("y (pixels)")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    for ax, stage in zip(axes.flat[1:], stages):
        channels = stage.tensor.shape[1]
        mosaic = stage_mosaic(stage.tensor[0]).numpy()
        ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        kind = "" if stage.kind in stage.name.lower() else f" ({stage.kind})"
        ax.set_title(f"after {stage.name}{kind}\n{stage.shape_text}", fontsize=12)
        ax.set_xlabel(f"maps 0..{channels - 1}, {mosaic_columns(channels)} per row")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[panels:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=14)
    fig.supxlabel(
        "Each tile is one feature map, scaled to its own min..max "
        "(dark = weakest response, yellow = strongest).",
        fontsize=10,
    )
    return fig


def _image_grid(count: int, columns: int, titles: Sequence[str], fontsize: float):
    """A grid of image tiles, each wide enough for its title's longest line at `fontsize`."""
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    lines = [line for title in titles for line in title.split("\n")] or [""]
    longest = max(len(line) for line in lines)
    tile = max(TILE_INCHES, 0.62 * fontsize / 72 * longest + 0.15)  # ~0.62 em per character
    title_height = max(title.count("\n") + 1 for title in titles or [""]) * fontsize * 1.4 / 72
    fig, axes = subplots(
        rows,
        columns,
        figsize=(tile * columns, (tile + title_height) * rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def sample_grid(
    images: torch.Tensor, labels: Sequence[str], title: str, columns: int = 8
) -> Figure:
    """uint8 images (N, C, H, W), shown as stored (0 black .. 255 white), each with its label."""
    fig, axes = _image_grid(len(images), columns, labels, fontsize=10)
    for ax, image, label in zip(axes.flat, images, labels):
        _show_uint8(ax, image)
        ax.set_title(label, fontsize=10)
    fig.suptitle(title, fontsize=13)
    return fig


def _show_uint8(ax, image: torch.Tensor) -> None:
    image = image.cpu()
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("on")
    ax.set_xticks([])
    ax.set_yticks([])


def mistakes_figure(
    images: torch.Tensor,
    indices: Sequence[int],
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    confidences: Sequence[float],
    title: str,
    columns: int = 8,
) -> Figure:
    """Misclassified images (N, C, H, W) uint8, each titled: index, true, predicted, confidence."""
    if len(images) == 0:
        fig, ax = subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "No mistakes: every image was classified correctly.",
            ha="center",
            va="center",
            fontsize=12,
        )
        ax.set_title(title, fontsize=13)
        return fig
    titles = [
        f"#{index}  true: {true}\npred: {pred} ({conf:.1%})"
        for index, true, pred, conf in zip(indices, true_names, predicted_names, confidences)
    ]
    fig, axes = _image_grid(len(images), columns, titles, fontsize=8.5)
    for ax, image, text in zip(axes.flat, images, titles):
        _show_uint8(ax, image)
        ax.set_title(text, fontsize=8.5)
        for spine in ax.spines.values():
            spine.set_edgecolor("tab:red")
            spine.set_linewidth(1.5)
    fig.suptitle(title, fontsize=13)
    return fig


def comparison_figure(
    labels: Sequence[str],
    parameters: Sequence[int],
    accuracies: Sequence[Sequence[float]],
    seconds: Sequence[Sequence[float]],
    title: str,
) -> Figure:
    """Test accuracy (mean ± std over seeds, each seed a small dot) and training time per model.

    `accuracies[i]` (fractions) and `seconds[i]` hold one value per seed for model `i`.
    """
    fig, (ax_acc, ax_time) = subplots(1, 2, figsize=(12, 4.8))
    colors = [matplotlib.colormaps["tab10"].colors[i % 10] for i in range(len(labels))]
    positions = list(range(len(labels)))
    ticks = [f"{label}\n{params:,} params" for label, params in zip(labels, parameters)]

    for x, accs, color in zip(positions, accuracies, colors):
        values = [100 * a for a in accs]
        mean, std = _mean_std(values)
        spread = [x + 0.08 * (i - (len(values) - 1) / 2) for i in range(len(values))]
        ax_acc.scatter(spread, values, color=color, alpha=0.4, s=16, zorder=2)
        error = std if len(values) > 1 else None
        ax_acc.errorbar(x, mean, yerr=error, fmt="o", color=color, capsize=6, ms=9, zorder=3)
        text = f"{mean:.2f}%" + (f"\n± {std:.2f}" if len(values) > 1 else "")
        ax_acc.annotate(
            text,
            (x, mean),
            textcoords="offset points",
            xytext=(14, 0),
            va="center",
            fontsize=10,
        )
    ax_acc.set_xticks(positions, ticks)
    ax_acc.set_xlim(-0.5, len(labels) - 0.3)
    ax_acc.margins(y=0.2)
    low, high = ax_acc.get_ylim()
    ax_acc.set_ylim(low, min(high, 100.5))  # no room above 100%
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Test accuracy")
    ax_acc.grid(True, axis="y", alpha=0.3)

    stats = [_mean_std(s) for s in seconds]
    means = [m for m, _ in stats]
    stds = [s for _, s in stats]
    several = any(len(s) > 1 for s in seconds)
    ax_time.bar(
        positions, means, yerr=stds if several else None, capsize=6, color=colors, width=0.6
    )
    for x, (mean, std) in zip(positions, stats):
        ax_time.annotate(
            f"{mean:.3g} s",
            (x, mean + std),
            textcoords="offset points",
            xytext=(0, 5),
            ha="center",
            fontsize=10,
        )
    ax_time.set_xticks(positions, ticks)
    ax_time.margins(y=0.18)
    ax_time.set_ylabel("training time per run (s)")
    ax_time.set_title("Training time (all epochs, without evaluation)")
    ax_time.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value, drawn without error bar)."""
    mean, std = mean_std(values)
    return mean, std or 0.0
