"""Reading a model folder: manifest, sha256 of every file (``check_files``), head weights and labels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import (
    ChecksumMismatchError,
    HeadKindError,
    ModelFileNotFoundError,
    ModelFolderNotFoundError,
    UnsafePathError,
    WeightsError,
)
from ..safe_io import resolve_inside
from .files import (
    MAX_SIDE_FILE_BYTES,
    labels_limit,
    npy_float32_from_bytes,
    parse_labels,
    read_side_file,
    sha256_file,
)
from .manifest import MANIFEST_FILENAME, Manifest, read_manifest

GRAPH_ROLES = ("model", "head", "gradient")
"""Files onnxruntime opens itself: hashed in chunks, never held in memory here."""

FileStatus = Literal["ok", "MISMATCH", "missing", "unsafe path"]


@dataclass(frozen=True)
class FileCheck:
    """The checksum status of one file the manifest lists."""

    role: str
    """"model", "weights", … or ``extra:<name>`` for other files in ``sha256``."""
    file: str
    status: FileStatus
    bytes: int | None
    path: Path | None = None
    problem: str | None = None
    """Why an "unsafe path" is unsafe (escapes the folder, loops)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``file``, ``status``, ``bytes``)."""
        return {"file": self.file, "status": self.status, "bytes": self.bytes}


def check_files(root: Path, manifest: Manifest) -> dict[str, FileCheck]:
    """The checksum status of every file in the manifest (roles first, then the other ``sha256`` entries)."""
    named = manifest.files.present()
    checks = {role: _check_one(root, role, name, manifest.sha256[name])[0] for role, name in named.items()}
    return {**checks, **_check_extras(root, manifest)}


def _check_extras(root: Path, manifest: Manifest) -> dict[str, FileCheck]:
    """The status of the files ``sha256`` lists beyond ``files`` (external data, notes…)."""
    named = set(manifest.files.present().values())
    return {f"extra:{name}": _check_one(root, f"extra:{name}", name, digest)[0]
            for name, digest in manifest.sha256.items() if name not in named and name != MANIFEST_FILENAME}


def _check_one(root: Path, role: str, name: str, expected: str | None,
               read_limit: int | None = None) -> tuple[FileCheck, bytes | None]:
    """Hash one file; with ``read_limit`` a small file is read whole (bounded) and its bytes returned too."""
    try:
        path = resolve_inside(root, name)
    except UnsafePathError as exc:
        return FileCheck(role, name, "unsafe path", None, problem=exc.problem), None
    if not path.is_file():
        return FileCheck(role, name, "missing", None, path), None
    data = None
    if read_limit is not None:
        # The small files are hashed and parsed from the same bytes, so a swap after the check is useless.
        data = read_side_file(path, role, read_limit)
        digest, size = hashlib.sha256(data).hexdigest(), len(data)
    elif expected is not None:
        digest, size = sha256_file(path), path.stat().st_size
    else:  # nothing to compare against (checksums not verified): no need to hash a large graph
        digest, size = "", path.stat().st_size
    status: FileStatus = "ok" if expected is None or digest == expected else "MISMATCH"
    return FileCheck(role, name, status, size, path), data


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

    def graph_paths(self) -> list[Path]:
        """The ONNX files onnxruntime will open: the model, then the head and gradient graphs if any."""
        present = self.manifest.files.present()
        return [self.root / present[role] for role in GRAPH_ROLES if role in present]

    def check_files(self) -> dict[str, FileCheck]:
        """The checksum status of every file in the manifest, read again from disk now."""
        return check_files(self.root, self.manifest)

    @classmethod
    def load(cls, folder: str | Path, *, verify_checksums: bool = True, trust_graph: bool = False) -> ModelFolder:
        """Read the manifest, verify every file's sha256, load weights, bias and labels, check the graphs.

        The graphs are checked before any session exists (see :mod:`cam_runtime.model.graph`): operators
        outside the CNN allowlist are refused unless ``trust_graph``; external data must stay in the folder
        and no tensor may exceed the size budget, whatever ``trust_graph`` says.
        """
        root = Path(folder)
        if not root.is_dir():
            raise ModelFolderNotFoundError(folder)
        manifest = read_manifest(root)
        k = manifest.num_classes
        contents: dict[str, bytes] = {}
        resolved: dict[str, Path] = {}
        for role, name in manifest.files.present().items():
            limit = None if role in GRAPH_ROLES else labels_limit(k) if role == "labels" else MAX_SIDE_FILE_BYTES
            check, data = _check_one(root, role, name, manifest.sha256[name] if verify_checksums else None, limit)
            if check.status == "unsafe path":
                raise UnsafePathError(name, check.problem or "points outside the model folder")
            if check.status == "missing" or check.path is None:
                raise ModelFileNotFoundError(check.path or root / name)
            if check.status == "MISMATCH":
                actual = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(check.path)
                raise ChecksumMismatchError(check.path, manifest.sha256[name], actual)
            resolved[role] = check.path
            if data is not None:
                contents[role] = data
        if verify_checksums:  # the other files the manifest lists (external data among them) are verified too
            for check in _check_extras(root, manifest).values():
                if check.status != "ok":
                    if check.status == "unsafe path":
                        raise UnsafePathError(check.file, check.problem or "points outside the model folder")
                    if check.status == "missing":
                        raise ModelFileNotFoundError(root / check.file)
                    raise ChecksumMismatchError(root / check.file, manifest.sha256[check.file],
                                                sha256_file(root / check.file))
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
        labels = (parse_labels(contents["labels"], str(resolved["labels"]), k) if "labels" in resolved
                  else [str(i) for i in range(k)])
        loaded = cls(root=root, manifest=manifest, weights=weights, bias=bias, labels=tuple(labels))
        from .graph import check_graphs  # parses ONNX with the onnx package: imported only when loading

        check_graphs(loaded, trust_graph=trust_graph)
        return loaded
