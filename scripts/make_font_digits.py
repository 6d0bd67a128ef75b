"""Make a set of printed digits that look like people's photos and scans, to try `cnnlab predict`.

Each digit is drawn with one of the TrueType/OpenType fonts installed on this machine, on a
canvas of odd size (90-400 px per side), off-centre, rotated by up to 12 degrees, dark on light
or light on dark, in grey or colour, sometimes with sensor-like noise, and saved as PNG or JPEG.
The layout is one folder per class, as image-folder datasets use:

    python scripts/make_font_digits.py font-digits --count 500 --seed 0
    cnnlab predict font-digits --run runs/<run> --json > predictions.jsonl

    font-digits/0/0000-DejaVuSans-Bold.png
    font-digits/7/0017-LiberationSerif-Italic.jpg
    ...

The same seed and the same fonts give the same images.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts")
MAX_ANGLE = 12.0  # degrees either way
SIDES = (90, 400)  # canvas width and height, pixels


def find_fonts(folders=FONT_DIRS) -> list[Path]:
    """Every .ttf/.otf font under `folders` that draws ten distinct, visible digits."""
    found = sorted({p for d in folders if d.is_dir() for p in d.rglob("*") if _is_font(p)})
    return [p for p in found if _draws_digits(p)]


def _is_font(path: Path) -> bool:
    return path.suffix.lower() in (".ttf", ".otf") and path.is_file()


def _draws_digits(path: Path) -> bool:
    try:
        font = ImageFont.truetype(str(path), 40)
    except OSError:
        return False
    glyphs = set()
    for digit in "0123456789":
        mask = Image.new("L", (80, 80), 0)
        ImageDraw.Draw(mask).text((10, 5), digit, font=font, fill=255)
        if not np.asarray(mask).any():
            return False
        glyphs.add(mask.tobytes())
    return len(glyphs) == 10  # a font without digits draws the same box for each


def colours(rng: np.random.Generator) -> tuple[tuple, tuple]:
    """(paper, ink) RGB with enough contrast (luma differs by 90+ levels), either polarity."""
    while True:
        if rng.random() < 0.5:  # grey
            paper = (int(rng.integers(0, 256)),) * 3
            ink = (int(rng.integers(0, 256)),) * 3
        else:
            paper = tuple(int(v) for v in rng.integers(0, 256, 3))
            ink = tuple(int(v) for v in rng.integers(0, 256, 3))
        if abs(_luma(paper) - _luma(ink)) >= 90:
            return paper, ink


def _luma(rgb: tuple) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def render(digit: int, font_path: Path, rng: np.random.Generator) -> Image.Image:
    """One RGB image of `digit`: odd size, off-centre, rotated, coloured, maybe noisy."""
    width, height = (int(v) for v in rng.integers(SIDES[0], SIDES[1] + 1, 2))
    size = int(min(width, height) * rng.uniform(0.35, 0.75))
    font = ImageFont.truetype(str(font_path), size)
    left, top, right, bottom = font.getbbox(str(digit))
    glyph = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(glyph).text((4 - left, 4 - top), str(digit), font=font, fill=255)
    angle = rng.uniform(-MAX_ANGLE, MAX_ANGLE)
    glyph = glyph.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    glyph = glyph.crop(glyph.getbbox())
    if glyph.width >= width or glyph.height >= height:  # keep the whole digit on the canvas
        glyph.thumbnail((width - 4, height - 4), Image.Resampling.LANCZOS)
    x = int(rng.integers(0, width - glyph.width + 1))
    y = int(rng.integers(0, height - glyph.height + 1))
    paper, ink = colours(rng)
    image = Image.new("RGB", (width, height), paper)
    image.paste(Image.new("RGB", glyph.size, ink), (x, y), glyph)
    if rng.random() < 0.3:
        noise = rng.normal(0.0, rng.uniform(3, 12), (height, width, 1))
        pixels = np.asarray(image, dtype=np.float64) + noise
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return image


def make(out: Path, count: int, seed: int, fonts: list[Path]) -> Counter:
    """Write `count` images under `out`/<digit>/; returns how many each font drew."""
    rng = np.random.default_rng(seed)
    used: Counter = Counter()
    for index in range(count):
        digit = index % 10
        font = fonts[int(rng.integers(len(fonts)))]
        image = render(digit, font, rng)
        folder = out / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{index:04d}-{font.stem}"
        if rng.random() < 0.5:
            image.save(folder / f"{name}.png")
        else:
            image.save(folder / f"{name}.jpg", quality=int(rng.integers(60, 96)))
        used[font.name] += 1
    return used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write <digit>/<name>.png|jpg into")
    parser.add_argument("--count", type=int, default=500, help="images (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    args = parser.parse_args(argv)
    fonts = find_fonts()
    if not fonts:
        print("no TrueType fonts with digits found under " + ", ".join(map(str, FONT_DIRS)))
        return 1
    used = make(args.out, args.count, args.seed, fonts)
    print(f"Wrote {args.count} images to {args.out}/<digit>/ with {len(used)} fonts:")
    for name, n in sorted(used.items()):
        print(f"  {n:4d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
