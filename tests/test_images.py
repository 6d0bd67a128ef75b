"""Reading people's images and preparing them as the model's data was made (cnnlab.images).

Expectations are hand-built: shapes drawn with numpy, centres of mass and bounding boxes computed
here with numpy, orientations applied with numpy's rotations, files written with PIL.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from cnnlab.errors import ConfigError, ImageError, NoInkError
from cnnlab.images import MAX_PIXELS, mnist_style, open_image, plain_resize, prepare

ROW, COL = np.arange(28)[:, None], np.arange(28)[None, :]


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    mass = image.astype(np.float64)
    return float((mass * ROW).sum() / mass.sum()), float((mass * COL).sum() / mass.sum())


def ink_box(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of the bounding box of the non-zero pixels."""
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def stroke_digit(size=(120, 90), box=(20, 15, 100, 70), width=9) -> np.ndarray:
    """A white '7'-like stroke on black, uint8 (H, W), drawn with PIL inside `box`."""
    canvas = Image.new("L", (size[1], size[0]), 0)
    top, left, bottom, right = box
    draw = ImageDraw.Draw(canvas)
    draw.line([(left, top), (right, top), (left + (right - left) // 3, bottom)], 255, width)
    return np.asarray(canvas)


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def test_white_on_black_result_is_centred_and_20_pixels_long():
    digit = stroke_digit()
    out = mnist_style(Image.fromarray(digit))
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    assert max(ink_box(out)) == 20
    row, col = centre_of_mass(out)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5
    assert out.max() == 255


def test_dark_ink_on_light_paper_gives_the_same_image():
    digit = stroke_digit()
    light = Image.fromarray(255 - digit)
    np.testing.assert_array_equal(mnist_style(light), mnist_style(Image.fromarray(digit)))


def test_grey_paper_and_grey_ink_give_the_same_image():
    digit = stroke_digit().astype(np.float64) / 255  # ink 0..1
    paper = np.rint(200 - 150 * digit).astype(np.uint8)  # grey ink (50) on grey paper (200)
    out = mnist_style(Image.fromarray(paper))
    reference = mnist_style(Image.fromarray(np.rint(255 * digit).astype(np.uint8)))
    assert np.abs(out.astype(int) - reference).max() <= 2  # 150 levels stretched to 255


@pytest.mark.parametrize("where", [(0, 0), (60, 0), (0, 50), (75, 50)])
def test_an_off_centre_digit_is_centred(where):
    top, left = where
    big = np.zeros((200, 160), dtype=np.uint8)
    big[top : top + 120, left : left + 90] = stroke_digit()
    out = mnist_style(Image.fromarray(big))
    row, col = centre_of_mass(out)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5
    np.testing.assert_array_equal(out, mnist_style(Image.fromarray(stroke_digit())))


def test_an_8x8_image_is_enough():
    tiny = np.zeros((8, 8), dtype=np.uint8)
    tiny[1:7, 3:5] = 255  # a 6x2 bar
    out = mnist_style(open_image(png_bytes(Image.fromarray(tiny))))
    assert ink_box(out)[0] == 20 and ink_box(out)[1] <= 9  # 20 long, the aspect about kept
    row, col = centre_of_mass(out)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


def test_smaller_than_8x8_is_refused():
    with pytest.raises(ImageError, match=r"tiny.png: 7x8 pixels is too small"):
        open_image(png_bytes(Image.new("L", (7, 8))), name="tiny.png")


def test_a_4000x3000_photo_of_a_block(tmp_path):
    photo = Image.new("L", (4000, 3000), 255)
    ImageDraw.Draw(photo).rectangle((500, 700, 1799, 2699), fill=0)  # 1300 wide, 2000 high
    path = tmp_path / "big.png"
    photo.save(path)
    out = mnist_style(open_image(path))
    ink = out == 255
    assert ink.sum() == 20 * 13 and (out[~ink] == 0).all()  # a solid 20x13 block, nothing else
    assert ink_box(out) == (20, 13)
    row, col = centre_of_mass(out)
    assert abs(row - 14) == 0.5 and col == 14  # 20 rows: 13.5 or 14.5; 13 columns: exactly 14


@pytest.mark.parametrize("ink", [(0, 0, 0), (255, 255, 255), (20, 40, 200)])
def test_strokes_on_a_transparent_background(ink):
    mask = stroke_digit() > 127  # drawing apps: opaque strokes, transparent elsewhere
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[mask] = (*ink, 255)
    image = open_image(png_bytes(Image.fromarray(rgba, "RGBA")))
    assert image.mode == "RGBA"
    expected = mnist_style(Image.fromarray(mask.astype(np.uint8) * 255))
    np.testing.assert_array_equal(mnist_style(image), expected)


def test_palette_image_with_and_without_transparency():
    mask = stroke_digit() > 127
    palette_image = Image.fromarray(mask.astype(np.uint8), "P")
    palette_image.putpalette([250, 250, 240, 30, 30, 90])  # 0: paper, 1: dark blue ink
    plain = open_image(png_bytes(palette_image))
    assert plain.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(plain)[mask][0], (30, 30, 90))
    expected = mnist_style(Image.fromarray(mask.astype(np.uint8) * 255))
    np.testing.assert_array_equal(mnist_style(plain), expected)  # a sharp mask: exact

    see_through = open_image(png_bytes(palette_image, transparency=0))
    assert see_through.mode == "RGBA"
    assert (np.asarray(see_through)[~mask][:, 3] == 0).all()
    np.testing.assert_array_equal(mnist_style(see_through), expected)


def test_16_bit_grey_is_scaled_to_8_bits():
    values = np.array([0, 257, 1000, 32768, 65535, 12850, 0, 0], dtype=np.uint16)
    image = open_image(png_bytes(Image.fromarray(np.tile(values, (8, 1)))))
    assert image.mode == "L"
    # v / 257, rounded: 1000 -> 3.89 -> 4, 32768 -> 127.5 -> 128, 12850 -> 50
    np.testing.assert_array_equal(np.asarray(image)[0], [0, 1, 4, 128, 255, 50, 0, 0])


@pytest.mark.parametrize(
    "orientation,rotate",
    [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a))],
)
def test_exif_orientation_is_applied(tmp_path, orientation, rotate):
    rng = np.random.default_rng(orientation)
    pixels = np.repeat(np.repeat(rng.integers(0, 256, (6, 10, 3), dtype=np.uint8), 8, 0), 8, 1)
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    stored = np.asarray(Image.open(path).convert("RGB"))  # the pixels as stored, not turned
    assert stored.shape == (48, 80, 3)
    np.testing.assert_array_equal(np.asarray(open_image(path)), rotate(stored))


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP", "GIF"])
@pytest.mark.parametrize("mode", ["L", "RGB", "1"])
def test_each_format_and_mode_reads_back(fmt, mode):
    rng = np.random.default_rng(0)
    grey = (rng.integers(0, 2, (16, 24)) * 255).astype(np.uint8)  # black/white: lossless in all
    image = Image.fromarray(grey).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    read = open_image(buffer.getvalue())
    assert read.mode in ("L", "RGB", "RGBA") and read.size == (24, 16)
    np.testing.assert_array_equal(np.asarray(read.convert("L")), grey)


def test_an_animated_gif_gives_its_first_frame():
    first, second = Image.new("L", (16, 16), 0), Image.new("L", (16, 16), 255)
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[second], duration=100)
    assert np.asarray(open_image(buffer.getvalue()).convert("L")).max() == 0


def test_a_blank_image_has_no_ink():
    for level in (0, 128, 255):
        with pytest.raises(NoInkError, match="no ink"):
            mnist_style(Image.new("L", (50, 40), level))
    noisy = np.random.default_rng(0).integers(240, 256, (60, 60), dtype=np.uint8)  # white paper
    with pytest.raises(NoInkError):
        mnist_style(Image.fromarray(noisy))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_on_the_paper_is_not_taken_for_ink(seed):
    """Grey ink (contrast 153) on paper with Gaussian noise, sigma 10: the digit's box and
    centring are found as without noise (measured: mean |difference| 4.5-5.0 grey levels once
    the integer centring shift, which noise can tip at a half pixel, is matched)."""
    digit = stroke_digit().astype(np.float64)
    noise = np.random.default_rng(seed).normal(0, 10, digit.shape)
    paper = np.clip(np.rint(230 - 0.6 * digit + noise), 0, 255).astype(np.uint8)
    out = mnist_style(Image.fromarray(paper))
    clean = mnist_style(Image.fromarray(stroke_digit()))
    assert ink_box(out) == ink_box(clean)
    row, col = centre_of_mass(out)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5
    shifted = [np.roll(clean, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert min(np.abs(out.astype(int) - s).mean() for s in shifted) <= 6


def bomb_png(width: int, height: int) -> bytes:
    """A small 1-bit PNG whose header claims `width` x `height` (IHDR patched, CRC fixed)."""
    data = bytearray(png_bytes(Image.new("1", (8, 8))))
    ihdr = bytearray(data[12:29])  # type + 13 bytes of IHDR fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.parametrize("size,shown", [(10_000, "10000x10000"), (20_000, "exceeds limit")])
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch, size, shown):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(size, size))
    assert path.stat().st_size < 200  # cheap to make, costly to decode

    def no_decoding(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match=shown) as err:
        open_image(path)
    assert str(path) in str(err.value) and "decoded" not in str(err.value)


def test_the_pixel_limit_can_be_lowered():
    assert MAX_PIXELS == 40_000_000
    with pytest.raises(ImageError, match=r"x.png: 100x100 pixels is more than the 9,999 allowed"):
        open_image(png_bytes(Image.new("L", (100, 100))), name="x.png", max_pixels=9_999)


def test_files_that_are_not_images(tmp_path):
    cases = {
        "notes.png": b"just some text, not an image\n",
        "empty.jpg": b"",
        "cut.png": png_bytes(Image.fromarray(stroke_digit()))[:200],
    }
    messages = {
        "notes.png": "not an image",
        "empty.jpg": "empty file",
        "cut.png": "cannot decode",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match=messages[name]) as err:
            open_image(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: ")
    with pytest.raises(ImageError, match="missing.png: not found"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="a folder"):
        open_image(tmp_path)
    with pytest.raises(ImageError, match="upload.bin: not an image"):
        open_image(b"GIF89a nonsense", name="upload.bin")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read():
        try:
            open_image(fifo)
        except ImageError as err:
            outcome.append(err)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=20)  # a blocking open would wait forever for a writer
    assert not reader.is_alive(), "open_image blocked on a FIFO"
    assert len(outcome) == 1 and "not a regular file" in str(outcome[0])


def mnist_made_digits() -> tuple[np.ndarray, str]:
    """Ten real MNIST test digits when CNNLAB_DATA is set, else one synthetic stroke made
    MNIST-style by mnist_style itself (then the check is that the result is stable)."""
    root = os.environ.get("CNNLAB_DATA")
    if root and (Path(root) / "MNIST" / "raw").is_dir():
        from cnnlab.data import get_dataset, load_split

        return load_split(get_dataset("mnist"), Path(root), train=False).images[:10, 0].numpy(), (
            "real"
        )
    return mnist_style(Image.fromarray(stroke_digit()))[None], "synthetic"


def test_an_mnist_digit_photographed_large_comes_back_close():
    """28x28 -> 300x300 (bicubic), dark on light, JPEG quality 90 -> mnist_style.

    Measured on the first 10 real test digits: mean absolute difference 2.1-13.8 grey levels
    (mean 7.3), while two different digits differ by 38-60. Bound: mean <= 10, each <= 16, and
    each result is closer to its own original than to any other of the ten.
    """
    originals, source = mnist_made_digits()
    diffs = []
    for original in originals:
        big = Image.fromarray(255 - original).resize((300, 300), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        big.save(buffer, format="JPEG", quality=90)
        back = mnist_style(open_image(buffer.getvalue())).astype(np.float64)
        diffs.append([np.abs(back - other).mean() for other in originals])
    diffs = np.array(diffs)  # (result, original)
    own = diffs.diagonal()
    assert own.mean() <= 10 and own.max() <= 16, (source, own)
    assert (diffs.argmin(axis=1) == np.arange(len(originals))).all()


def test_an_mnist_digit_is_a_fixed_point():
    originals, _ = mnist_made_digits()
    for original in originals:  # real MNIST: COM within 0.5 px and a 20-pixel box already
        out = mnist_style(Image.fromarray(original))
        assert np.abs(out.astype(int) - original).mean() <= 1.0


def test_plain_resize_grey_colour_and_transparent():
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[:, :30] = (255, 0, 0)
    out = plain_resize(Image.fromarray(rgb), (20, 30), 3)
    assert out.shape == (3, 20, 30) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 10, 5], (255, 0, 0))
    np.testing.assert_array_equal(out[:, 10, 25], (0, 0, 0))
    grey = plain_resize(Image.fromarray(rgb), (28, 28), 1)
    assert grey.shape == (1, 28, 28) and grey[0, 14, 3] == 76  # luma of pure red: 0.299 * 255

    clear = np.zeros((32, 32, 4), dtype=np.uint8)  # fully transparent -> white paper
    np.testing.assert_array_equal(
        plain_resize(Image.fromarray(clear, "RGBA"), (28, 28), 1), np.full((1, 28, 28), 255)
    )


def test_prepare_picks_the_style_and_checks_it():
    image = Image.fromarray(stroke_digit())
    np.testing.assert_array_equal(prepare(image, "mnist", (1, 28, 28)), mnist_style(image)[None])
    np.testing.assert_array_equal(
        prepare(image, "resize", (3, 32, 32)), plain_resize(image, (32, 32), 3)
    )
    with pytest.raises(ConfigError, match="unknown preprocessing 'sharpen'"):
        prepare(image, "sharpen", (1, 28, 28))
    with pytest.raises(ConfigError, match=r"\(1, 28, 28\)"):
        prepare(image, "mnist", (3, 32, 32))
