"""Writing a model folder atomically: files into a temporary sibling folder, checksums, then one rename."""

from __future__ import annotations

import copy
import datetime as _dt
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import ChecksumMismatchError, InvalidArgumentError, ModelFileNotFoundError, OutputExistsError
from ..safe_io import current_umask, resolve_inside
from .files import sha256_file
from .manifest import (
    MANIFEST_FILENAME,
    HeadSpec,
    InputSpec,
    Manifest,
    ModelFiles,
    OutputSpec,
    Preprocess,
    check_relative_path,
    json_text,
    parse_manifest,
)

if TYPE_CHECKING:
    from .reader import ModelFolder

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
    with _staging(dest) as tmp:
        _put(tmp / MODEL_FILE, model)
        if w is not None:
            np.save(tmp / WEIGHTS_FILE, w, allow_pickle=False)
        for file_name, graph in zip((HEAD_FILE, GRADIENT_FILE), graph_head or (), strict=False):
            _put(tmp / file_name, graph)
        if b is not None:
            np.save(tmp / BIAS_FILE, b, allow_pickle=False)
        if labels is not None:
            (tmp / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
        for extra_name, data in (extra_files or {}).items():
            _put(tmp / check_relative_path(extra_name), data)
        files = ModelFiles(model=MODEL_FILE, weights=WEIGHTS_FILE if w is not None else None,
                           bias=BIAS_FILE if b is not None else None,
                           labels=LABELS_FILE if labels is not None else None,
                           head=HEAD_FILE if graph_head else None, gradient=GRADIENT_FILE if graph_head else None)
        digests = {fname: sha256_file(tmp / fname) for fname in [*files.present().values(), *(extra_files or {})]}
        meta = {"created": _now(), **(provenance or {})}
        manifest = Manifest(name=name, files=files, input=input_spec, preprocess=preprocess, outputs=outputs,
                            num_classes=k, sha256=digests, provenance=meta,
                            head=(head_spec or HeadSpec()) if graph_head else None)
        parse_manifest(manifest.to_dict())  # what we write must be what we read
        (tmp / MANIFEST_FILENAME).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def write_derived_folder(source: ModelFolder, dest: str | Path, *, replace: dict[str, bytes | Path],
                         changes: dict[str, Any], force: bool = False) -> Manifest:
    """Write a copy of ``source`` at ``dest`` with some graphs replaced (``role → new file``).

    The whole manifest is copied (unknown sections included) and only ``changes`` (top-level keys, e.g.
    ``name``, ``variant``) and the checksums differ. Every other file is copied byte for byte and checked
    against the source manifest's sha256, so a file swapped since ``source`` was loaded is caught.
    """
    dest = Path(dest)
    if dest.exists() and not force:
        raise OutputExistsError(dest)
    manifest = source.manifest
    named = manifest.files.present()
    unknown = set(replace) - set(named)
    if unknown:
        raise InvalidArgumentError(f"cannot replace {sorted(unknown)}: the source folder has no such file")
    data = copy.deepcopy(manifest.raw) if manifest.raw else manifest.to_dict()
    with _staging(dest) as tmp:
        digests: dict[str, str] = {}
        for file_name in dict.fromkeys([*named.values(), *manifest.sha256]):
            if file_name == MANIFEST_FILENAME:
                continue
            role = next((r for r, n in named.items() if n == file_name), None)
            target = tmp / check_relative_path(file_name)
            if role in replace:
                _put(target, replace[role])
                digests[file_name] = sha256_file(target)
                continue
            origin = resolve_inside(source.root, file_name)
            if not origin.is_file():
                raise ModelFileNotFoundError(origin)
            _put(target, origin)
            digests[file_name] = sha256_file(target)
            expected = manifest.sha256.get(file_name)
            if expected is not None and digests[file_name] != expected:
                raise ChecksumMismatchError(source.root / file_name, expected, digests[file_name])
        data["sha256"] = digests
        data.update(changes)
        data["created"] = _now()
        parse_manifest(data)
        (tmp / MANIFEST_FILENAME).write_text(json_text(data), encoding="utf-8")
    return parse_manifest(data, dest / MANIFEST_FILENAME)


def _put(target: Path, content: bytes | Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        shutil.copyfile(content, target)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A temporary sibling of ``dest`` to fill; on success it replaces ``dest`` in one rename, else vanishes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        tmp.chmod(0o755 & ~current_umask())  # mkdtemp makes 0700; a model folder is ordinary shared data
        yield tmp
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest``; an existing ``dest`` is moved aside first and removed only afterwards."""
    if not dest.exists():
        tmp.rename(dest)
        return
    old = dest.with_name(f".{dest.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
    dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
