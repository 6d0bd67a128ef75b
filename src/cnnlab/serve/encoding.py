"""The JSON shapes of the live page's API: arrays as base64 bytes, results as plain objects.

An image or a stage of feature maps travels as `{"shape": [C, H, W], "data": base64}` where the
data is C*H*W uint8 values, map by map and row by row: a third of the size of a JSON list of
numbers, and decoded by the page with one `atob`. `encoding=png` sends each map as a grey PNG
data URL instead (measured slower; kept for comparison, see `cnnlab.serve.bench`).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import asdict

import numpy as np
from PIL import Image

from cnnlab.errors import ConfigError
from cnnlab.predict import Prediction
from cnnlab.serve.explain_position import ConvExplanation
from cnnlab.serve.model_info import ModelInfo
from cnnlab.serve.model_service import StageMaps

ENCODINGS = ("raw", "png")


def array_json(pixels: np.ndarray) -> dict:
    """uint8 (C, H, W) -> {"shape": [C, H, W], "data": base64}."""
    data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return {"shape": list(pixels.shape), "data": base64.b64encode(data).decode("ascii")}


def decode_input(value, shape: tuple[int, int, int]) -> np.ndarray:
    """What the page sends back as `input` -> uint8 (C, H, W) of the model's input shape.

    Accepts the `array_json` object that /api/predict returned, or nested lists of integers
    0..255 shaped (C, H, W), or (H, W) for one channel. Raises ConfigError otherwise.
    """
    expected = "x".join(map(str, shape))
    if isinstance(value, dict):
        try:
            data = base64.b64decode(value["data"], validate=True)
            given = tuple(int(d) for d in value["shape"])
        except (KeyError, TypeError, ValueError, binascii.Error) as err:
            raise ConfigError(
                f"input must be {{'shape': [C, H, W], 'data': base64}} ({err})"
            ) from None
        if given != tuple(shape) or len(data) != int(np.prod(shape)):
            raise ConfigError(
                f"input must be {expected} uint8 values; got shape {given} with {len(data)} bytes"
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"input is not an array of numbers ({err})") from None
    if array.ndim == 2 and shape[0] == 1:
        array = array[None]
    if array.shape != tuple(shape) or array.dtype.kind not in "iu":
        raise ConfigError(f"input must be {expected} integers; got shape {array.shape}")
    if array.min() < 0 or array.max() > 255:
        raise ConfigError("input values must be between 0 and 255")
    return array.astype(np.uint8)


def png_data_url(values: np.ndarray) -> str:
    """uint8 (H, W) -> 'data:image/png;base64,...' (greyscale)."""
    buffer = io.BytesIO()
    Image.fromarray(values, mode="L").save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def stage_json(stage: StageMaps, encoding: str = "raw") -> dict:
    out = {
        "name": stage.name,
        "kind": stage.kind,
        "shape": list(stage.shape),
        "title": stage.title,
        "low": stage.low,
        "high": stage.high,
    }
    if encoding == "png":
        maps = np.frombuffer(stage.data, dtype=np.uint8).reshape(stage.shape)
        out["maps"] = [png_data_url(m) for m in maps]
    else:
        out["data"] = base64.b64encode(stage.data).decode("ascii")
    return out


def prediction_json(prediction: Prediction) -> dict:
    """{ink, label, index, confidence, top}: `cnnlab predict --json`'s record, less the file."""
    record = prediction.to_json()
    del record["file"]
    return {"ink": True, **record}


def explanation_json(e: ConvExplanation) -> dict:
    out = asdict(e)
    out["terms"] = [asdict(t) for t in e.terms]
    out |= {
        "in_padding": e.in_padding,
        "difference": e.difference,
        "matches": e.matches,
        "formula": e.formula(),
    }
    return out


def info_json(info: ModelInfo) -> dict:
    out = asdict(info)
    out |= {
        "input_text": info.input_text,
        "test_accuracy": info.test_accuracy,
        "input_mode": "draw" if info.drawing else "upload",
    }
    return out
