"""Training figures: the loss curve, filter grids, the kernel mosaic and the confusion matrix.

>>> fig = filter_grid(model.conv1.weight, "Learned filters, conv1")
>>> cnnlab.viz.save_figure(fig, Path("filters.png"))
"""

from __future__ import annotations

import matplotlib
import torch
from matplotlib.figure import Figure

from cnnlab.viz import subplots


def loss_curve(metrics: list[dict], step_losses: torch.Tensor | None = None) -> Figure:
    """Training loss per step (faint) and per epoch (the tutorial's `losses`), plus validation."""
    fig, ax = subplots(figsize=(7, 4.2))
    epochs = [m["epoch"] for m in metrics]
    if step_losses is not None and len(step_losses) and epochs:
        steps_per_epoch = len(step_losses) / epochs[-1]
        x = (torch.arange(len(step_losses)) + 1) / steps_per_epoch
        ax.plot(
            x.numpy(),
            step_losses.numpy(),
            color="tab:blue",
            alpha=0.25,
            linewidth=0.6,
            label="batch loss",
        )
        window = max(int(steps_per_epoch) // 20, 1)
        if len(step_losses) > window:
            smooth = torch.nn.functional.avg_pool1d(step_losses[None, None].float(), window, 1)[
                0, 0
            ]
            ax.plot(
                x[window - 1 :].numpy(),
                smooth.numpy(),
                color="tab:blue",
                linewidth=1.2,
                label=f"batch loss, mean of {window}",
            )
    ax.plot(
        epochs,
        [m["loss"] for m in metrics],
        "o-",
        color="tab:blue",
        label="training loss (epoch mean)",
    )
    if any("val_loss" in m for m in metrics):
        val = [(m["epoch"], m["val_loss"]) for m in metrics if "val_loss" in m]
        ax.plot(*zip(*val), "s--", color="tab:orange", label="validation loss")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss (log scale)")
    ax.set_title("Training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def filter_grid(weight: torch.Tensor, title: str, columns: int = 8) -> Figure:
    """The tutorial's grid: one grey image per output filter of `weight` (out, 1, k, k), each
    scaled to its own min..max as its own `imshow` would, numbered above.

    For multi-channel filters the channels are averaged; use `kernel_mosaic` to see them all.
    The filters are tiles of one image on one axes, which draws in a fraction of the time of
    one axes per filter.
    """
    w = weight.detach().float().cpu().mean(dim=1)  # (out, kh, kw)
    count, kh, kw = w.shape
    columns = min(columns, count)
    rows = -(-count // columns)
    low = w.amin(dim=(1, 2), keepdim=True)
    span = w.amax(dim=(1, 2), keepdim=True) - low
    scaled = torch.where(span > 0, (w - low) / span.clamp(min=1e-30), torch.full_like(w, 0.5))
    gap_x, gap_y = max(kw // 3, 1), max(kh // 2, 1)  # white between tiles; room for numbers
    cell_w, cell_h = kw + gap_x, kh + gap_y
    mosaic = torch.full((rows * cell_h, columns * cell_w), float("nan"))
    fig, ax = subplots(figsize=(10, (10 - 0.4) * rows * cell_h / (columns * cell_w) + 0.6))
    for i in range(count):
        top, left = (i // columns) * cell_h + gap_y, (i % columns) * cell_w
        mosaic[top : top + kh, left : left + kw] = scaled[i]
        ax.text(left + (kw - 1) / 2, top - 0.6, str(i), ha="center", va="bottom", fontsize=8)
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(mosaic.numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlim(-0.5, columns * cell_w - gap_x - 0.5)
    ax.set_ylim(rows * cell_h - 0.5, -0.5)
    ax.axis("off")
    fig.suptitle(title)
    return fig


def kernel_mosaic(weight: torch.Tensor, title: str) -> Figure:
    """Every kernel of a conv layer: row = output filter, column = input channel.

    Each k x k kernel is scaled to its own min..max, so its pattern shows whatever its size.
    """
    from torchvision.utils import make_grid

    w = weight.detach().float().cpu()  # (out, in, k, k)
    out_ch, in_ch = w.shape[:2]
    tiles = w.reshape(out_ch * in_ch, 1, *w.shape[2:])
    grid = make_grid(tiles, nrow=in_ch, padding=1, normalize=True, scale_each=True, pad_value=1.0)
    k = w.shape[2] + 1
    fig, ax = subplots(figsize=(min(2 + in_ch * 0.35, 16), min(1.5 + out_ch * 0.3, 24)))
    ax.imshow(grid[0].numpy(), cmap="gray", interpolation="nearest")
    ax.set_xticks([k * i + k / 2 for i in range(0, in_ch, 4)], range(0, in_ch, 4))
    ax.set_yticks([k * i + k / 2 for i in range(0, out_ch, 4)], range(0, out_ch, 4))
    ax.set_xlabel("input channel")
    ax.set_ylabel("output filter")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def confusion_figure(confusion: torch.Tensor, class_names, title: str) -> Figure:
    n = len(class_names)
    fig, ax = subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    rates = confusion.float() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    for t in range(n):
        for p in range(n):
            count = int(confusion[t, p])
            if count:
                color = "white" if rates[t, p] > 0.5 else "black"
                ax.text(p, t, str(count), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title)
    fig.tight_layout()
    return fig
