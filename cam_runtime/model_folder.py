"""Loading a model folder: manifest, sha256 of every file, weights without pickle, labels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import (
    ChecksumMismatchError,
    ModelFileNotFoundError,
    ModelFolderNotFoundError,
    UnsafePathError,
    WeightsError,
)
from .manifest import Manifest, read_manifest

_HASH_CHUNK = 1 << 20


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
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if any(not line.strip() for line in lines):
        raise WeightsError(f"{path} has blank lines; expected one label per line")
    return [line.strip() for line in lines]


def load_npy_float32(path: Path, role: str) -> npt.NDArray[np.float32]:
    """Load a .npy without ever unpickling, and require a finite float array."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        # numpy raises ValueError("Object arrays cannot be loaded when allow_pickle=False") for pickles.
        raise WeightsError(f"{role} file {path.name} cannot be loaded safely ({exc}); pickles are refused") from None
    except OSError as exc:
        raise WeightsError(f"{role} file {path.name} is not a valid .npy file ({exc})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise WeightsError(f"{role} file {path.name} must hold a float array, found dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise WeightsError(f"{role} file {path.name} holds NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


@dataclass(frozen=True)
class ModelFolder:
    """A verified model folder: its manifest, resolved file paths and CAM head weights."""

    root: Path
    manifest: Manifest
    weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    labels: tuple[str, ...]

    @property
    def model_path(self) -> Path:
        """Absolute path of the ONNX graph."""
        return self.root / self.manifest.files.model

    @property
    def num_channels(self) -> int:
        """Number of feature channels C."""
        return int(self.weights.shape[0])

    @classmethod
    def load(cls, folder: str | Path, *, verify_checksums: bool = True) -> ModelFolder:
        """Read the manifest, verify every file's sha256 and load weights, bias and labels."""
        root = Path(folder)
        if not root.is_dir():
            raise ModelFolderNotFoundError(folder)
        manifest = read_manifest(root)
        resolved = {role: resolve_inside(root, name) for role, name in manifest.files.present().items()}
        for role, path in resolved.items():
            if not path.is_file():
                raise ModelFileNotFoundError(path)
            if verify_checksums:
                expected = manifest.sha256[manifest.files.present()[role]]
                actual = sha256_file(path)
                if actual != expected:
                    raise ChecksumMismatchError(path, expected, actual)
        weights = load_npy_float32(resolved["weights"], "weights")
        k = manifest.num_classes
        if weights.ndim != 2 or weights.shape[1] != k:
            raise WeightsError(f"weights must have shape [C, {k}] (num_classes={k}), found {list(weights.shape)}")
        if "bias" in resolved:
            bias = load_npy_float32(resolved["bias"], "bias")
            if bias.shape != (k,):
                raise WeightsError(f"bias must have shape [{k}], found {list(bias.shape)}")
        else:
            bias = np.zeros(k, dtype=np.float32)
        if "labels" in resolved:
            labels = read_labels(resolved["labels"])
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
