"""Loading a model folder: manifest, sha256 of every file, weights without pickle, labels."""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import (
    ChecksumMismatchError,
    HeadKindError,
    ModelFileNotFoundError,
    ModelFolderNotFoundError,
    UnsafePathError,
    WeightsError,
)
from .manifest import Manifest, read_manifest

_HASH_CHUNK = 1 << 20
MAX_SIDE_FILE_BYTES = 1 << 30
"""Weights, bias and labels files above this size are refused unread (a ResNet50 head is 8 MB)."""


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


def read_labels(path: str | Path) -> list[str]:
    """One label per line; trailing newline optional; blank lines are refused."""
    return parse_labels(read_side_file(Path(path), "labels"), str(path))


def parse_labels(data: bytes, name: str) -> list[str]:
    """Labels from the bytes of a UTF-8 labels file (``name`` is used in errors)."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise WeightsError(f"labels file {name} is not UTF-8 text") from None
    if any(not line.strip() for line in lines):
        raise WeightsError(f"{name} has blank lines; expected one label per line")
    return [line.strip() for line in lines]


def read_side_file(path: Path, role: str, limit: int = MAX_SIDE_FILE_BYTES) -> bytes:
    """Read a small model file whole: regular files only (never blocks on a FIFO), at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ModelFileNotFoundError(path) from None
    except OSError as exc:
        raise WeightsError(f"cannot read {role} file {path.name}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise WeightsError(f"{role} file {path.name} is not a regular file")
        if info.st_size > limit:
            raise WeightsError(f"{role} file {path.name} has {info.st_size} bytes, more than the {limit} allowed")
        chunks = []
        remaining = limit + 1
        while remaining > 0 and (chunk := os.read(fd, min(remaining, _HASH_CHUNK))):
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise WeightsError(f"cannot read {role} file {path.name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise WeightsError(f"{role} file {path.name} grew past the {limit} bytes allowed while being read")
    return data


def load_npy_float32(path: Path, role: str) -> npt.NDArray[np.float32]:
    """Load a .npy without ever unpickling, and require a finite float array."""
    return npy_float32_from_bytes(read_side_file(path, role), path.name, role)


def npy_float32_from_bytes(data: bytes, name: str, role: str) -> npt.NDArray[np.float32]:
    """Parse .npy bytes, refusing pickles from the header alone, and require a finite float array."""
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
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        problem = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{role} file {name} is not a valid .npy file ({problem})") from None
    if dtype.hasobject:
        # Decided from the header: the pickle payload after it is never read, let alone unpickled.
        raise WeightsError(f"{role} file {name} holds Python objects (a pickle); refused, pickles are never loaded")
    if dtype.kind != "f":
        raise WeightsError(f"{role} file {name} must hold a float array, found dtype {dtype}")
    count = math.prod(shape)
    offset = stream.tell()
    if len(data) - offset != count * dtype.itemsize:
        raise WeightsError(f"{role} file {name} declares shape {list(shape)} ({count * dtype.itemsize} bytes of "
                           f"data) but holds {len(data) - offset} bytes (truncated or padded)")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")
    with np.errstate(over="ignore"):  # overflow to inf is caught just below
        out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise WeightsError(f"{role} file {name} holds NaN, infinite or float32-overflowing values")
    return out


@dataclass(frozen=True)
class ModelFolder:
    """A verified model folder: its manifest, resolved file paths and CAM head weights."""

    root: Path
    manifest: Manifest
    weights: npt.NDArray[np.float32] | None
    """Dense kernel [C, K] of a linear head; None for a graph head (``manifest.head``)."""
    bias: npt.NDArray[np.float32]
    labels: tuple[str, ...]
    channels: int = 0
    """C, the number of feature channels (from the weights, or the head graph's input for a graph head)."""

    @property
    def model_path(self) -> Path:
        """Absolute path of the ONNX graph."""
        return self.root / self.manifest.files.model

    @property
    def num_channels(self) -> int:
        """Number of feature channels C (0 when unknown: a graph head before its session is opened)."""
        return int(self.weights.shape[0]) if self.weights is not None else self.channels

    @property
    def is_linear(self) -> bool:
        """True for the GAP → Dense head (closed forms); False for a graph head."""
        return self.manifest.head is None

    def linear_weights(self, purpose: str) -> npt.NDArray[np.float32]:
        """The dense kernel, or a clear error saying ``purpose`` needs a linear (GAP → Dense) head."""
        if self.weights is None:
            raise HeadKindError(purpose)
        return self.weights

    def path_of(self, role: str) -> Path:
        """Absolute path of a file named in ``files`` (model, head, gradient, …)."""
        name = self.manifest.files.present().get(role)
        if name is None:
            raise ModelFileNotFoundError(self.root / f"<{role}>")
        return self.root / name

    @classmethod
    def load(cls, folder: str | Path, *, verify_checksums: bool = True) -> ModelFolder:
        """Read the manifest, verify every file's sha256 and load weights, bias and labels."""
        root = Path(folder)
        if not root.is_dir():
            raise ModelFolderNotFoundError(folder)
        manifest = read_manifest(root)
        resolved = {role: resolve_inside(root, name) for role, name in manifest.files.present().items()}
        for path in resolved.values():
            if not path.is_file():
                raise ModelFileNotFoundError(path)
        contents: dict[str, bytes] = {}
        for role, path in resolved.items():
            if role in ("model", "head", "gradient"):  # graphs: hashed here, opened by onnxruntime later
                actual = sha256_file(path) if verify_checksums else ""
            else:
                # The small files are hashed and parsed from the same bytes, so a swap after the check is useless.
                contents[role] = read_side_file(path, role)
                actual = hashlib.sha256(contents[role]).hexdigest()
            expected = manifest.sha256[manifest.files.present()[role]]
            if verify_checksums and actual != expected:
                raise ChecksumMismatchError(path, expected, actual)
        k = manifest.num_classes
        weights = None
        if "weights" in resolved:
            weights = npy_float32_from_bytes(contents["weights"], resolved["weights"].name, "weights")
            if weights.ndim != 2 or weights.shape[1] != k:
                raise WeightsError(f"weights must have shape [C, {k}] (num_classes={k}), found {list(weights.shape)}")
        if "bias" in resolved:
            bias = npy_float32_from_bytes(contents["bias"], resolved["bias"].name, "bias")
            if bias.shape != (k,):
                raise WeightsError(f"bias must have shape [{k}], found {list(bias.shape)}")
        else:
            bias = np.zeros(k, dtype=np.float32)
        if "labels" in resolved:
            labels = parse_labels(contents["labels"], str(resolved["labels"]))
            if len(labels) != k:
                raise WeightsError(f"labels file has {len(labels)} lines but num_classes is {k}")
        else:
            labels = [str(i) for i in range(k)]
        return cls(root=root, manifest=manifest, weights=weights, bias=bias, labels=tuple(labels))


def resolve_inside(root: Path, name: str) -> Path:
    """Join a manifest path to the folder, refusing anything (links included) that escapes it."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise UnsafePathError(name)
    return path
