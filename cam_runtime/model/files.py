"""The small files of a model folder, read safely: sha256, head weights (.npy, never unpickled) and labels."""

from __future__ import annotations

import hashlib
import io
import math
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import ModelFileNotFoundError, WeightsError
from ..safe_io import RefusedFileError, failure_reason, read_bounded

_HASH_CHUNK = 1 << 20
MAX_SIDE_FILE_BYTES = 1 << 30
"""Weights and bias files above this size are refused unread (a ResNet50 head is 8 MB)."""
MAX_LABEL_BYTES = 1024
"""Longest label accepted, in UTF-8 bytes; with ``num_classes`` it bounds the labels file before it is read."""
MAX_WEIGHT_DIMS = 2
"""Head weights are [C, K] and the bias [K]: no .npy with more axes is read."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in Keras' class-index order (shipped with the package)."""
    text = resources.files("cam_runtime").joinpath("data/imagenet_labels.txt").read_text(encoding="utf-8")
    return text.splitlines()


def labels_limit(num_classes: int) -> int:
    """The largest labels file accepted for ``num_classes`` labels (refused by size, before reading)."""
    return num_classes * (MAX_LABEL_BYTES + 2)


def read_side_file(path: Path, role: str, limit: int = MAX_SIDE_FILE_BYTES) -> bytes:
    """Read a small model file whole: regular files only (never blocks on a FIFO), at most ``limit`` bytes."""
    try:
        return read_bounded(path, limit)
    except FileNotFoundError:
        raise ModelFileNotFoundError(path) from None
    except (OSError, RefusedFileError) as exc:
        raise WeightsError(f"cannot read {role} file {path.name}: {failure_reason(exc)}") from None


def read_labels(path: str | Path, num_classes: int | None = None) -> list[str]:
    """One label per line; trailing newline optional; blank lines are refused."""
    limit = labels_limit(num_classes) if num_classes else MAX_SIDE_FILE_BYTES
    return parse_labels(read_side_file(Path(path), "labels", limit), str(path), num_classes)


def parse_labels(data: bytes, name: str, num_classes: int | None = None) -> list[str]:
    """Labels from the bytes of a UTF-8 labels file (``name`` is used in errors).

    With ``num_classes`` the line count is checked on the bytes first, so a file of millions of short lines
    never becomes millions of Python strings.
    """
    lines_in_file = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
    if num_classes is not None and lines_in_file > num_classes + 1:  # one more: a blank line is named below
        raise WeightsError(f"labels file has {lines_in_file} lines but num_classes is {num_classes}")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise WeightsError(f"labels file {name} is not UTF-8 text") from None
    if any(not line.strip() for line in lines):
        raise WeightsError(f"{name} has blank lines; expected one label per line")
    if num_classes is not None and len(lines) != num_classes:  # \r, \v, \x1c… also split lines
        raise WeightsError(f"labels file has {len(lines)} lines but num_classes is {num_classes}")
    too_long = next((i for i, line in enumerate(lines) if len(line.encode("utf-8")) > MAX_LABEL_BYTES), None)
    if too_long is not None:
        raise WeightsError(f"{name} line {too_long + 1} is longer than {MAX_LABEL_BYTES} bytes")
    return [line.strip() for line in lines]


def load_npy_float32(path: Path, role: str) -> npt.NDArray[np.float32]:
    """Load a .npy without ever unpickling, and require a finite float array."""
    return npy_float32_from_bytes(read_side_file(path, role), path.name, role)


def npy_float32_from_bytes(data: bytes, name: str, role: str) -> npt.NDArray[np.float32]:
    """Parse .npy bytes, validating the header (dtype, shape, size) before any array is made.

    Pickles are refused from the header alone; the array must be a non-empty float16/32/64 array of at most
    :data:`MAX_WEIGHT_DIMS` axes with finite values. Subnormal float32 values are flushed to zero, and dense
    weights with no normal value at all are refused (squared in the gradient methods, they give NaN/inf).
    """
    if data.startswith(b"PK\x03\x04"):
        raise WeightsError(f"{role} file {name} is a .npz/zip archive, not a .npy file")
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise WeightsError(f"{role} file {name} is a Python pickle, not a .npy file; refused, pickles are never loaded")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, TypeError, SyntaxError, EOFError, OverflowError, MemoryError) as exc:
        problem = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{role} file {name} is not a valid .npy file ({problem})") from None
    if dtype.hasobject:
        # Decided from the header: the pickle payload after it is never read, let alone unpickled.
        raise WeightsError(f"{role} file {name} holds Python objects (a pickle); refused, pickles are never loaded")
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8) or dtype.fields is not None or dtype.subdtype:
        raise WeightsError(f"{role} file {name} must hold a float array (float16/32/64), found dtype {dtype}")
    if not 1 <= len(shape) <= MAX_WEIGHT_DIMS or any(not isinstance(d, int) or d < 0 for d in shape):
        raise WeightsError(f"{role} file {name} declares shape {list(shape)}; expected 1 or 2 non-negative sizes")
    count = math.prod(shape)  # Python integers: no overflow, whatever the header says
    if count == 0:
        raise WeightsError(f"{role} file {name} declares shape {list(shape)}: an empty array")
    offset = stream.tell()
    if len(data) - offset != count * dtype.itemsize:
        raise WeightsError(f"{role} file {name} declares shape {list(shape)} ({count * dtype.itemsize} bytes of "
                           f"data) but holds {len(data) - offset} bytes (truncated or padded)")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")
    with np.errstate(over="ignore", under="ignore"):  # overflow to inf is caught just below
        out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise WeightsError(f"{role} file {name} holds NaN, infinite or float32-overflowing values")
    tiny = np.finfo(np.float32).tiny
    magnitude = np.abs(out)
    if role == "weights" and not np.any(magnitude >= tiny):
        raise WeightsError(f"{role} file {name} holds only zero or subnormal values (all below {tiny:.2e}): such a "
                           "head has no class evidence and its maps are rounding noise (NaN/inf once squared)")
    if np.any((magnitude > 0) & (magnitude < tiny)):  # a stray subnormal contributes nothing: flushed to zero
        out = np.where(magnitude < tiny, np.float32(0), out).astype(np.float32)
    return out
