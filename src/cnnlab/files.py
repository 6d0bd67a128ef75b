"""Files on disk, handled safely: atomic writes, validated reads, JSON, safetensors, no pickles.

Every file is written to a temporary name in the same folder and moved into place with
`os.replace`, so a crash or kill leaves the previous good version. Every read checks that the
path is a regular file first and turns each problem into one typed error naming the file.
Output folders are prepared (and checked writable) before any work starts. Nothing is ever
unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.errors import CheckpointError, CnnlabError, ConfigError, OutputError

if TYPE_CHECKING:  # PyTorch and safetensors load with the first tensor file, not with this module
    import torch

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
MAX_JSON_BYTES = (
    16 << 20
)  # config.json and metrics.jsonl are kilobytes; a bigger one is not cnnlab's
MAX_JSON_DEPTH = 32  # cnnlab writes at most 4 levels; deeper JSON is refused, never recursed into


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix.

    A failed write leaves the previous file and no temporary file behind, and raises
    `OutputError` naming `path`; an interrupt is re-raised unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # created with the usual permissions (umask)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):  # e.g. the folder is missing: nothing to remove
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path, error: type[CnnlabError] = CheckpointError) -> dict:
    """A JSON object from a regular file of at most `MAX_JSON_BYTES`, nested at most
    `MAX_JSON_DEPTH` deep; every problem is one `error` naming the file."""
    data = parse_json(read_bounded(path, error, MAX_JSON_BYTES), path, error)
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def read_bounded(path: Path, error: type[CnnlabError], max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; devices, FIFOs and folders are refused
    before anything is read (`require_regular_file`)."""
    require_regular_file(path, error, max_bytes)
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)  # the file may have grown since it was checked
    except OSError as err:
        raise error(f"{path}: cannot read: {err.strerror or err}") from None
    if len(raw) > max_bytes:
        raise error(f"{path}: more than the {max_bytes:,} bytes expected")
    return raw


def parse_json(raw: bytes | str, path: Path | str, error: type[CnnlabError] = CheckpointError):
    """Decode JSON text; too deep, too long a number or not UTF-8 is one `error`, never a crash."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(text)
    except (
        UnicodeDecodeError,
        ValueError,
        RecursionError,
    ) as err:  # JSONDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise error(f"{path}: not valid JSON ({reason})") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise error(f"{path}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    return data


def json_depth(value, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply lists and objects nest in `value` (a scalar is 0); stops counting past `limit`."""
    depth, level = 0, [value]
    while level and depth <= limit:
        level = [
            child
            for item in level
            if isinstance(item, (dict, list))
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        depth += 1
    return depth - 1 if not level else depth


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None):
    from safetensors.torch import save as save_safetensors_bytes

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"cnnlab": json.dumps(metadata)} if metadata is not None else None
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata=meta))


def load_safetensors(
    path: Path,
    check: Callable[[dict[str, tuple[str, tuple[int, ...]]], dict | None], None] | None = None,
    max_bytes: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read tensors and cnnlab's JSON metadata; refuse anything that is not safetensors.

    Only a regular file (of at most `max_bytes`) is opened. `check(header, metadata)` sees each
    tensor's dtype (safetensors' name, e.g. "F32") and shape before any tensor is read, so a file
    that declares tensors the caller does not expect is refused without loading them.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    refuse_pickle(path)
    require_regular_file(path, CheckpointError, max_bytes)
    try:
        with safe_open(path, framework="pt") as f:
            raw_meta = (f.metadata() or {}).get("cnnlab")
            meta = parse_json(raw_meta, path) if raw_meta else None
            if check is not None:
                header = {}
                for key in f.keys():  # noqa: SIM118
                    part = f.get_slice(key)
                    header[key] = (part.get_dtype(), tuple(part.get_shape()))
                check(header, meta)
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        return tensors, meta
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from None


def require_regular_file(
    path: Path, error: type[CnnlabError], max_bytes: int | None = None, what: str = "a file"
) -> int:
    """The size of `path` if it is a regular file (after symlinks) of at most `max_bytes`.

    Devices, FIFOs and folders are refused before anything is read: reading `/dev/zero` would
    exhaust memory and a FIFO would block forever. `what` names the file expected in the message
    for a folder ("expected an IDX file, found a folder").
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as err:
        raise error(f"{path}: cannot read: {err.strerror or err}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path}: expected {what}, found a folder")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise error(f"{path}: {info.st_size:,} bytes, more than the {max_bytes:,} expected")
    return info.st_size


def read_bytes(
    path: Path, error: type[CnnlabError], max_bytes: int | None = None, what: str = "a file"
) -> bytes:
    """The contents of the regular file `path`: every problem is one `error` naming the file."""
    require_regular_file(path, error, max_bytes, what)
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot read: {err.strerror or err}") from None


def prepare_output_dir(
    path: Path, owned: Sequence[str], overwrite: bool = False, refusal: str = ""
) -> Path:
    """Create (or, with `overwrite`, reuse) a folder for cnnlab's files `owned`; check that it
    can be written before any work starts.

    A folder that is not empty is refused with the message `refusal` unless `overwrite`; then
    only the `owned` files are removed, never the user's other files.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(refusal or f"{path} is not empty; pass --overwrite to replace its files")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to output folder {path}: {err.strerror or err}") from None
    if overwrite:
        for name in owned:
            (path / name).unlink(missing_ok=True)
    return path


def expand_path(text: str | os.PathLike) -> Path:
    """A path with `~` and `~user` expanded; an unknown user is a `ConfigError`, not a crash."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # Python cannot find that user's home folder
        user = str(text).split("/", 1)[0]
        raise ConfigError(f"{text}: no user {user[1:]!r} on this system to expand {user}") from None


def refuse_pickle(path: Path) -> None:
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: refusing to load a pickled PyTorch file; loading one can run arbitrary "
            f"code. cnnlab reads only .safetensors weights with a config.json"
        )
