"""Writing a model folder atomically: files into a temporary sibling folder, checksums, then one rename."""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError, OutputExistsError
from .manifest import (
    MANIFEST_FILENAME,
    HeadSpec,
    InputSpec,
    Manifest,
    ModelFiles,
    OutputSpec,
    Preprocess,
    parse_manifest,
)
from .model_folder import sha256_file

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "dense_weights.npy"
BIAS_FILE = "dense_bias.npy"
LABELS_FILE = "labels.txt"
HEAD_FILE = "head.onnx"
GRADIENT_FILE = "gradient.onnx"


def write_model_folder(dest: str | Path, *, model: bytes | Path, weights: npt.ArrayLike | None,
                       bias: npt.ArrayLike | None, labels: Sequence[str] | None, name: str, input_spec: InputSpec,
                       preprocess: Preprocess, outputs: OutputSpec, provenance: dict[str, Any] | None = None,
                       force: bool = False, extra_files: dict[str, bytes] | None = None,
                       graph_head: tuple[bytes | Path, bytes | Path] | None = None,
                       head_spec: HeadSpec | None = None, num_classes: int | None = None) -> Manifest:
    """Write a complete, checksummed model folder at ``dest``; never leaves a half-written folder.

    ``model`` is the ONNX graph as bytes or a path to copy. Refuses an existing ``dest`` unless ``force``.
    A non-linear head passes ``weights=None``, ``graph_head=(head.onnx, gradient.onnx)`` and ``num_classes``.
    """
    dest = Path(dest)
    if dest.exists() and not force:
        raise OutputExistsError(dest)
    if (weights is None) == (graph_head is None):
        raise InvalidArgumentError("pass exactly one of weights (a GAP → Dense head) and graph_head")
    w = None if weights is None else np.ascontiguousarray(np.asarray(weights, dtype=np.float32))
    if w is not None and w.ndim != 2:
        raise InvalidArgumentError(f"weights must be 2-D [C, K], got shape {w.shape}")
    if w is None and not num_classes:
        raise InvalidArgumentError("a graph head needs num_classes")
    k = int(w.shape[1]) if w is not None else int(num_classes or 0)
    b = None if bias is None else np.ascontiguousarray(np.asarray(bias, dtype=np.float32))
    if b is not None and b.shape != (k,):
        raise InvalidArgumentError(f"bias must have shape [{k}], got {b.shape}")
    if labels is not None:
        labels = [str(label).strip() for label in labels]
        if len(labels) != k or any(not label or "\n" in label for label in labels):
            raise InvalidArgumentError(f"labels must be {k} non-empty single-line strings, got {len(labels)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        tmp.chmod(0o755 & ~_current_umask())  # mkdtemp makes 0700; a model folder is ordinary shared data
        if isinstance(model, bytes):
            (tmp / MODEL_FILE).write_bytes(model)
        else:
            shutil.copyfile(model, tmp / MODEL_FILE)
        if w is not None:
            np.save(tmp / WEIGHTS_FILE, w, allow_pickle=False)
        for file_name, graph in zip((HEAD_FILE, GRADIENT_FILE), graph_head or (), strict=False):
            if isinstance(graph, bytes):
                (tmp / file_name).write_bytes(graph)
            else:
                shutil.copyfile(graph, tmp / file_name)
        if b is not None:
            np.save(tmp / BIAS_FILE, b, allow_pickle=False)
        if labels is not None:
            (tmp / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
        for extra_name, data in (extra_files or {}).items():
            (tmp / extra_name).write_bytes(data)
        files = ModelFiles(model=MODEL_FILE, weights=WEIGHTS_FILE if w is not None else None,
                           bias=BIAS_FILE if b is not None else None,
                           labels=LABELS_FILE if labels is not None else None,
                           head=HEAD_FILE if graph_head else None, gradient=GRADIENT_FILE if graph_head else None)
        digests = {fname: sha256_file(tmp / fname) for fname in [*files.present().values(), *(extra_files or {})]}
        meta = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **(provenance or {})}
        manifest = Manifest(name=name, files=files, input=input_spec, preprocess=preprocess, outputs=outputs,
                            num_classes=k, sha256=digests, provenance=meta,
                            head=(head_spec or HeadSpec()) if graph_head else None)
        parse_manifest(manifest.to_dict())  # what we write must be what we read
        (tmp / MANIFEST_FILENAME).write_text(manifest.to_json(), encoding="utf-8")
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest``; an existing ``dest`` is moved aside first and removed only afterwards."""
    if not dest.exists():
        tmp.rename(dest)
        return
    old = dest.with_name(f".{dest.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
    dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
