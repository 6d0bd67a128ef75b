"""Generate a colour folder dataset: MNIST digits, coloured, on random textured backgrounds, 32x32.

Each image takes one MNIST digit (training digits for the train split, test digits for the test
split), places it at a random offset in a 32x32 canvas, and paints it in a random colour over a
random background: smooth colour noise, stripes of random frequency and direction, and pixel
noise. Background and digit lie on opposite sides of the brightness range (dark digit on a light
background or the reverse), so the digit stays readable. Everything follows from --seed.

    python scripts/make_colour_digits.py --data-dir ../shared/data --out /tmp/colour-digits
    # OUT/train/<digit>/<n>.png (20,000) and OUT/test/<digit>/<n>.png (4,000)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cnnlab.data import get_dataset
from cnnlab.data.sources import load_split, resolve_data_root
from cnnlab.errors import CnnlabError

SIZE = 32
CHUNK = 2000


def backgrounds(n: int, light: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 32, 32) float textures in [0, 0.45] (dark) or [0.55, 1] (light) per image."""
    coarse = torch.from_numpy(rng.random((n, 3, 4, 4), dtype=np.float32))
    smooth = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False).numpy()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    angle = rng.uniform(0, np.pi, (n, 1, 1))
    freq = rng.uniform(1, 6, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    stripes = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    amplitude = rng.uniform(0, 0.3, (n, 1, 1, 1))
    texture = smooth + amplitude * stripes[:, None] + rng.normal(0, 0.04, (n, 3, SIZE, SIZE))
    texture = np.clip(texture, 0, 1) * 0.45
    return np.where(light[:, None, None, None], 1 - texture, texture)


def colour_digits(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (n, 28, 28) digits -> uint8 (n, 32, 32, 3) coloured images on textures."""
    n = len(digits)
    light = rng.random(n) < 0.5
    background = backgrounds(n, light, rng)
    alpha = np.zeros((n, 1, SIZE, SIZE), np.float32)
    offsets = rng.integers(0, SIZE - 28 + 1, (n, 2))
    for i, (dy, dx) in enumerate(offsets):
        alpha[i, 0, dy : dy + 28, dx : dx + 28] = digits[i] / 255.0
    ink = rng.uniform(0.6, 1.0, (n, 3, 1, 1))  # bright ink; dark on light backgrounds
    ink = np.where(light[:, None, None, None], 1 - ink, ink)
    image = background * (1 - alpha) + ink * alpha
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def write_split(digits, labels, out: Path, rng: np.random.Generator) -> None:
    for d in range(10):
        (out / str(d)).mkdir(parents=True, exist_ok=True)
    for start in range(0, len(labels), CHUNK):
        images = colour_digits(digits[start : start + CHUNK], rng)
        for i, image in enumerate(images, start):
            Image.fromarray(image, "RGB").save(out / str(int(labels[i])) / f"{i:05d}.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="data root holding MNIST/raw/ (default: as cnnlab)")
    parser.add_argument("--out", required=True, type=Path, help="folder to create (must be empty)")
    parser.add_argument("--train", type=int, default=20_000, help="training images (default 20000)")
    parser.add_argument("--test", type=int, default=4_000, help="test images (default 4000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"make_colour_digits: error: {args.out} is not empty", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    spec, root = get_dataset("mnist"), resolve_data_root(args.data_dir)
    try:
        for split, train, count in (("train", True, args.train), ("test", False, args.test)):
            data = load_split(spec, root, train=train)
            if not 0 < count <= len(data):
                print(
                    f"make_colour_digits: error: --{split} must be 1..{len(data)}", file=sys.stderr
                )
                return 1
            pick = np.sort(rng.choice(len(data), size=count, replace=False))
            digits, labels = data.images[pick, 0].numpy(), data.labels[pick].numpy()
            write_split(digits, labels, args.out / split, rng)
            print(f"{split}: {count} images in {args.out / split}")
    except CnnlabError as err:
        print(f"make_colour_digits: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
