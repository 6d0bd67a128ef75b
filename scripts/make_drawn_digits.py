"""Make digits drawn the way people draw on the live page's pad: pointer strokes, not fonts.

Each digit is a few strokes (polylines) from hand-made templates, jittered per point, scaled,
moved off-centre, slightly rotated and drawn with a round brush of random width on the pad's
280x280 canvas, white on black as `cnnlab serve` sends it, or black on white as a drawing app
saves it, as PNG. One folder per class:

    python scripts/make_drawn_digits.py drawn-digits --count 300 --seed 0
    python scripts/eval_digits.py drawn-digits            # the bundled model, by kind

The same seed gives the same images.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PAD = 280  # the live page's drawing canvas, pixels
# Strokes in a unit box (x right, y down), one list of (x, y) points per stroke, as a person
# would draw each digit with a mouse: a few shapes per digit.
TEMPLATES: dict[int, list[list[list[tuple[float, float]]]]] = {
    0: [
        [
            [
                (0.5, 0.05),
                (0.2, 0.2),
                (0.12, 0.5),
                (0.2, 0.82),
                (0.5, 0.95),
                (0.8, 0.82),
                (0.88, 0.5),
                (0.8, 0.18),
                (0.5, 0.05),
            ]
        ]
    ],
    1: [[[(0.5, 0.05), (0.5, 0.95)]], [[(0.3, 0.25), (0.55, 0.05), (0.55, 0.95)]]],
    2: [
        [
            [
                (0.15, 0.25),
                (0.35, 0.07),
                (0.65, 0.07),
                (0.82, 0.25),
                (0.75, 0.5),
                (0.15, 0.93),
                (0.88, 0.93),
            ]
        ]
    ],
    3: [
        [
            [
                (0.15, 0.12),
                (0.6, 0.05),
                (0.82, 0.22),
                (0.6, 0.45),
                (0.4, 0.48),
                (0.6, 0.5),
                (0.85, 0.7),
                (0.65, 0.93),
                (0.15, 0.88),
            ]
        ]
    ],
    4: [
        [[(0.65, 0.95), (0.65, 0.05), (0.1, 0.65), (0.9, 0.65)]],
        [[(0.25, 0.05), (0.15, 0.55), (0.85, 0.55)], [(0.7, 0.2), (0.7, 0.95)]],
    ],
    5: [
        [
            [
                (0.82, 0.07),
                (0.25, 0.07),
                (0.2, 0.45),
                (0.55, 0.4),
                (0.82, 0.6),
                (0.75, 0.88),
                (0.45, 0.95),
                (0.15, 0.85),
            ]
        ]
    ],
    6: [
        [
            [
                (0.75, 0.07),
                (0.4, 0.25),
                (0.2, 0.6),
                (0.3, 0.9),
                (0.6, 0.93),
                (0.8, 0.72),
                (0.65, 0.5),
                (0.35, 0.52),
                (0.22, 0.65),
            ]
        ]
    ],
    7: [
        [[(0.12, 0.08), (0.88, 0.08), (0.4, 0.95)]],
        [[(0.12, 0.08), (0.88, 0.08), (0.45, 0.95)], [(0.3, 0.5), (0.75, 0.5)]],
    ],
    8: [
        [
            [
                (0.5, 0.48),
                (0.2, 0.28),
                (0.5, 0.05),
                (0.8, 0.28),
                (0.5, 0.48),
                (0.15, 0.72),
                (0.5, 0.95),
                (0.85, 0.72),
                (0.5, 0.48),
            ]
        ]
    ],
    9: [[[(0.8, 0.35), (0.5, 0.55), (0.2, 0.35), (0.5, 0.07), (0.8, 0.3), (0.75, 0.95)]]],
}


def draw(digit: int, rng: np.random.Generator) -> Image.Image:
    strokes = TEMPLATES[digit][rng.integers(len(TEMPLATES[digit]))]
    height = rng.uniform(0.45, 0.8) * PAD
    width = height * rng.uniform(0.55, 0.8) * (0.35 if digit == 1 else 1.0)
    cx = PAD / 2 + rng.uniform(-0.15, 0.15) * PAD
    cy = PAD / 2 + rng.uniform(-0.1, 0.1) * PAD
    angle = math.radians(rng.uniform(-12, 12))
    brush = int(rng.integers(10, 26))
    dark_on_light = rng.random() < 0.3
    image = Image.new("L", (PAD, PAD), 255 if dark_on_light else 0)
    pen = ImageDraw.Draw(image)
    ink = 0 if dark_on_light else 255
    for stroke in strokes:
        points = []
        for x, y in stroke:
            x, y = x + rng.normal(0, 0.025), y + rng.normal(0, 0.025)
            dx, dy = (x - 0.5) * width, (y - 0.5) * height
            points.append(
                (
                    cx + dx * math.cos(angle) - dy * math.sin(angle),
                    cy + dx * math.sin(angle) + dy * math.cos(angle),
                )
            )
        pen.line(points, fill=ink, width=brush, joint="curve")
        for px, py in points:  # round caps and joints, as a pointer-drawn line has
            r = brush / 2
            pen.ellipse((px - r, py - r, px + r, py + r), fill=ink)
    return image


def make(out: Path, count: int, seed: int) -> Counter:
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()
    for i in range(count):
        digit = i % 10
        folder = out / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        draw(digit, rng).save(folder / f"{i:04d}-drawn.png")
        counts[digit] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create (must not exist or be empty)")
    parser.add_argument("--count", type=int, default=300, help="images in all (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"make_drawn_digits: {args.out} is not empty", file=sys.stderr)
        return 1
    counts = make(args.out, args.count, args.seed)
    print(f"Wrote {sum(counts.values())} drawn digits to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
