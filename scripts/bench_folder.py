"""Measure a folder dataset's data path: decoding into the cache, and a training epoch from the
cache against torchvision's ImageFolder + DataLoader(num_workers=2), all in one process.

    python scripts/bench_folder.py /tmp/fashion-folder --repeats 2

1. Decoding: `load_image_folder` into a fresh cache folder (every file decoded and written), then
   again (a cache hit); images/s for each. The image files themselves may already be in the
   operating system's file cache (they are after the first pass), so this is decoding speed, not
   disk speed.
2. One epoch of the tutorial's CNN (batch 64, Adam 1e-3) over the training split, with cnnlab's
   training step on the same runtime (device, precision, memory layout) for both data paths:
   (a) cnnlab: the decoded uint8 images from the cache, resident, batches by index
       (`DeviceLoader`), as `cnnlab train` runs;
   (b) torchvision: `ImageFolder` (PIL decoding, `ToTensor`) and `DataLoader(num_workers=2,
       shuffle=True)`, as the tutorial's loop would read a folder.
   (a) and (b) alternate, repeat after repeat; the table shows each epoch's seconds.
   `--data-only` reads the same batches without training: the data path's own speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from cnnlab.config import TrainConfig
from cnnlab.data.folder import load_image_folder
from cnnlab.data.folder_splits import spec_of
from cnnlab.data.loader import DeviceLoader
from cnnlab.data.registry import FolderOptions
from cnnlab.data.splits import Split
from cnnlab.runtime import configure_process, resolve_runtime
from cnnlab.train import build_model, make_optimizer, train_step


def decode_rates(path: Path) -> tuple[dict, object]:
    """Images/s of a cold decode into a fresh cache, and of the cache hit after it."""
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-cache-") as cache:
        rates = {}
        for label in ("decode", "cache hit"):
            started = time.perf_counter()
            data = load_image_folder(path, cache_dir=cache, progress=False)
            seconds = time.perf_counter() - started
            total = sum(len(s) for s in (data.train, data.val, data.test) if s is not None)
            assert data.cache_hit == (label == "cache hit")
            rates[label] = {"images": total, "seconds": seconds, "images_per_s": total / seconds}
    return rates, data


def grey_loader(path: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert("L")


def rgb_loader(path: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def epoch_seconds(model, optimizer, batches, precision: str, device) -> tuple[float, int]:
    """Train over every batch (or with `model` None only read them); seconds and images (the
    loss is read every 100 steps)."""
    started, images = time.perf_counter(), 0
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        if model is None:
            images += len(y)
            continue
        model.train()
        loss, _ = train_step(model, optimizer, x, y, precision)
        images += len(y)
        if step % 100 == 0:
            loss.item()
    return time.perf_counter() - started, images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder dataset (PATH/train/<class>/...)")
    parser.add_argument("--repeats", type=int, default=2, help="epochs per data path (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--threads", type=int, help="PyTorch threads (default: PyTorch's choice)")
    parser.add_argument(
        "--data-only", action="store_true", help="only read the batches of an epoch, no training"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import torchvision
    from torchvision import transforms

    configure_process(args.threads)
    runtime = resolve_runtime("cpu", "auto", args.threads)
    rates, data = decode_rates(args.folder)
    for label, r in rates.items():
        print(
            f"{label:>9}: {r['images']:,} images in {r['seconds']:.2f}s "
            f"= {r['images_per_s']:,.0f}/s"
        )
    spec = spec_of(data, FolderOptions(str(args.folder)))
    channels = spec.shape[0]
    config = TrainConfig()
    train = Split(data.train.images, data.train.labels).to(runtime.device)
    train_root = args.folder / "train" if data.layout == "splits" else args.folder
    if data.held_out:
        print("note: torchvision reads every image of the folder, cnnlab its training split")
    folder_set = torchvision.datasets.ImageFolder(
        train_root,
        transform=transforms.ToTensor(),
        loader=grey_loader if channels == 1 else rgb_loader,
    )
    assert tuple(folder_set.classes) == spec.classes

    def cnnlab_batches(repeat):
        loader = DeviceLoader(train, 64, True, repeat, channels_last=runtime.channels_last)
        return loader.epoch(0)

    def torchvision_batches(repeat):
        torch.manual_seed(repeat)
        return torch.utils.data.DataLoader(
            folder_set, batch_size=64, shuffle=True, num_workers=args.workers
        )

    paths = {
        "cnnlab cache": cnnlab_batches,
        f"ImageFolder, {args.workers} workers": torchvision_batches,
    }
    seconds = {name: [] for name in paths}
    print(
        f"runtime: {runtime.device}, precision {runtime.precision}, "
        f"channels_last {runtime.channels_last}"
    )
    for repeat in range(args.repeats):
        for name, batches in paths.items():
            torch.manual_seed(0)
            model = None if args.data_only else build_model(config, runtime, spec)
            optimizer = None if model is None else make_optimizer(config, model.parameters())
            s, images = epoch_seconds(
                model, optimizer, batches(repeat), runtime.precision, runtime.device
            )
            seconds[name].append(s)
            print(
                f"repeat {repeat + 1}: {name}: epoch of {images:,} images in {s:.1f}s "
                f"({images / s:,.0f}/s)"
            )
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    names = list(paths)
    print("median epoch: " + ", ".join(f"{n} {medians[n]:.1f}s" for n in names))
    print(f"ratio {names[1]} / {names[0]}: {medians[names[1]] / medians[names[0]]:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"decode": rates, "epoch_seconds": seconds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
