"""Stand-ins for cnnlab.images, cnnlab.predict and cnnlab.bundled while they are not merged."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import numpy as np
from PIL import Image

import cnnlab.errors as errors


def install() -> None:
    try:
        import cnnlab.images  # noqa: F401

        return
    except ImportError:
        pass

    class ImageError(errors.DataError):
        pass

    class NoInkError(ImageError):
        pass

    errors.ImageError, errors.NoInkError = ImageError, NoInkError

    def open_image(source, name=None, max_pixels=40_000_000):
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise ImageError("image too large (a decompression bomb?)")
            image.load()
        except ImageError:
            raise
        except Exception as err:
            raise ImageError(f"not an image ({err})") from None
        return image

    def mnist_style(image):
        gray = np.asarray(image.convert("L"), dtype=np.float32)
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        if border.mean() > 127:
            gray = 255 - gray
        ys, xs = np.nonzero(gray > 30)
        if len(ys) == 0:
            raise NoInkError("no ink: the image is blank")
        crop = gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        scale = 20 / max(crop.shape)
        h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
        small = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((w, h), Image.LANCZOS))
        out = np.zeros((28, 28), np.float32)
        top, left = (28 - h) // 2, (28 - w) // 2
        out[top : top + h, left : left + w] = small
        total = out.sum()
        cy = (out.sum(1) * np.arange(28)).sum() / total
        cx = (out.sum(0) * np.arange(28)).sum() / total
        out = np.roll(out, (round(13.5 - cy), round(13.5 - cx)), axis=(0, 1))
        return out.clip(0, 255).astype(np.uint8)

    def plain_resize(image, size, channels):
        mode = "L" if channels == 1 else "RGB"
        array = np.asarray(image.convert(mode).resize(size[::-1], Image.BILINEAR))
        return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()

    def prepare(image, style, shape):
        if style == "mnist":
            return mnist_style(image)[None]
        return plain_resize(image, shape[1:], shape[0])

    images = types.ModuleType("cnnlab.images")
    images.__dict__.update(
        MAX_PIXELS=40_000_000,
        open_image=open_image,
        mnist_style=mnist_style,
        plain_resize=plain_resize,
        prepare=prepare,
    )
    predict = types.ModuleType("cnnlab.predict")

    def preprocessing_for(run_config):
        name = run_config.get("dataset", {}).get("name", "mnist")
        return "mnist" if name == "mnist" else "resize"

    predict.preprocessing_for = preprocessing_for
    bundled = types.ModuleType("cnnlab.bundled")

    def bundled_run_dir():
        raise errors.CheckpointError("no bundled model yet; pass --run RUN")

    bundled.bundled_run_dir = bundled_run_dir
    sys.modules.update(
        {"cnnlab.images": images, "cnnlab.predict": predict, "cnnlab.bundled": bundled}
    )
