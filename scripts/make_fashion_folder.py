"""Write Fashion-MNIST as a folder dataset: OUT/train/<class>/<n>.png and OUT/test/<class>/<n>.png.

The images come from the IDX files under the data root (FashionMNIST/raw/), read and validated by
cnnlab; nothing is downloaded. Class folders are the dataset's class names with "/" written as "-"
(so "T-shirt/top" becomes "T-shirt-top"); file names are the image's index in its split.

    python scripts/make_fashion_folder.py --data-dir ../shared/data --out /tmp/fashion-folder
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from cnnlab.data import get_dataset
from cnnlab.data.sources import load_split, resolve_data_root
from cnnlab.errors import CnnlabError


def folder_name(class_name: str) -> str:
    return class_name.replace("/", "-")


def write_split(images, labels, classes, out: Path, limit: int | None) -> int:
    """Save uint8 (N, 1, H, W) images as greyscale PNGs under out/<class>/; returns the count."""
    for name in classes:
        (out / folder_name(name)).mkdir(parents=True, exist_ok=True)
    n = len(labels) if limit is None else min(limit, len(labels))
    for i in range(n):
        path = out / folder_name(classes[int(labels[i])]) / f"{i:05d}.png"
        Image.fromarray(images[i, 0].numpy(), "L").save(path)
    return n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", help="data root holding FashionMNIST/raw/ (default: as cnnlab)"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to create (must be empty)")
    parser.add_argument(
        "--limit", type=int, help="at most this many images per split (default: all)"
    )
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"make_fashion_folder: error: {args.out} is not empty", file=sys.stderr)
        return 1
    spec = get_dataset("fashion-mnist")
    root = resolve_data_root(args.data_dir)
    try:
        for split, train in (("train", True), ("test", False)):
            data = load_split(spec, root, train=train)
            n = write_split(data.images, data.labels, spec.classes, args.out / split, args.limit)
            print(f"{split}: {n} images in {args.out / split}")
    except CnnlabError as err:
        print(f"make_fashion_folder: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
