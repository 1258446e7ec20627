"""The model folder manifest (format ``cam-model`` v1): parsing, validation and serialisation."""

from __future__ import annotations

import json
import math
import os
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ManifestError, UnsafePathError, UnsupportedFormatError
from ..safe_io import RefusedFileError, failure_reason, read_bounded

FORMAT_NAME = "cam-model"
SUPPORTED_FORMAT_VERSIONS = (1,)
MANIFEST_FILENAME = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
"""A manifest is a few KiB; anything above this is refused unread."""
MAX_INPUT_SIDE = 16384
"""Largest input height/width accepted (keeps a hostile manifest from asking for a huge warm-up tensor)."""
MAX_CLASSES = 1_000_000
"""Largest num_classes accepted."""
MAX_NAME_CHARS = 200
"""Longest model name accepted (it is shown in terminals and reports)."""

Layout = Literal["NHWC", "NCHW"]
ColorOrder = Literal["RGB", "BGR"]
ResizeMode = Literal["nearest", "bilinear", "area", "bicubic"]
LAYOUTS: tuple[str, ...] = ("NHWC", "NCHW")
COLOR_ORDERS: tuple[str, ...] = ("RGB", "BGR")
RESIZE_MODES: tuple[str, ...] = ("nearest", "bilinear", "area", "bicubic")


@dataclass(frozen=True)
class ModelFiles:
    """Relative paths of the files a model folder holds."""

    model: str
    weights: str | None = None
    bias: str | None = None
    labels: str | None = None
    head: str | None = None
    gradient: str | None = None

    def present(self) -> dict[str, str]:
        """Role → relative path for the files that exist in this folder."""
        return {role: name for role, name in asdict(self).items() if name is not None}


@dataclass(frozen=True)
class InputSpec:
    """The ONNX input: tensor name, layout and spatial size."""

    name: str
    layout: Layout
    height: int
    width: int


@dataclass(frozen=True)
class Preprocess:
    """How pixels become the input tensor: ``(pixels_0_255_in_color_order - mean) / std``."""

    color_order: ColorOrder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: ResizeMode = "bilinear"


@dataclass(frozen=True)
class OutputSpec:
    """Names of the two ONNX outputs and the layout of the features."""

    probabilities: str
    features: str
    features_layout: Layout = "NHWC"


HEAD_KINDS: tuple[str, ...] = ("linear", "graph")


@dataclass(frozen=True)
class HeadSpec:
    """A non-linear head (``"head": {"kind": "graph", ...}``): tensor names inside ``files.head``/``files.gradient``.

    ``head.onnx`` maps ``features_input`` (laid out as ``outputs.features_layout``) to ``logits`` and
    ``probabilities`` [N, K]; ``gradient.onnx`` maps ``features_input`` and ``directions_input`` [N, T, K] to
    ``gradients`` = ∂(Σ_k directions_tk · logits_k)/∂features, [N, T, *feature dims].
    """

    kind: Literal["graph"] = "graph"
    features_input: str = "features"
    directions_input: str = "directions"
    logits: str = "logits"
    probabilities: str = "probabilities"
    gradients: str = "gradients"


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated ``manifest.json``."""

    name: str
    files: ModelFiles
    input: InputSpec
    preprocess: Preprocess
    outputs: OutputSpec
    num_classes: int
    sha256: dict[str, str]
    format: str = FORMAT_NAME
    format_version: int = 1
    provenance: dict[str, Any] = field(default_factory=dict)
    head: HeadSpec | None = None
    """None: the linear GAP → Dense head of ``files.weights`` (every folder written before heads existed)."""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The decoded JSON as read, unknown keys included (derived folders copy it whole); empty when built here."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form, with the documented key order."""
        data = {
            "format": self.format,
            "format_version": self.format_version,
            "name": self.name,
            "files": asdict(self.files),
            "input": asdict(self.input),
            "preprocess": {**asdict(self.preprocess), "mean": list(self.preprocess.mean),
                           "std": list(self.preprocess.std)},
            "outputs": asdict(self.outputs),
            "num_classes": self.num_classes,
            "sha256": dict(self.sha256),
        }
        if self.head is not None:
            data["head"] = asdict(self.head)
        data.update(self.provenance)
        return data

    def to_json(self) -> str:
        """The manifest as indented JSON text."""
        return json_text(self.to_dict())


def json_text(data: dict[str, Any]) -> str:
    """A manifest dict as the indented JSON text written to ``manifest.json``."""
    return json.dumps(data, indent=2) + "\n"


# Bounds that keep (pixel - mean) / std finite in float32.
_MAX_PIXEL_CONSTANT = 1e6
_MIN_STD = 1e-6

_CORE_KEYS = {"format", "format_version", "name", "files", "input", "preprocess", "outputs",
              "num_classes", "sha256", "head"}


def check_relative_path(name: str) -> str:
    """Refuse a manifest file path that is absolute or climbs out of the folder."""
    path = Path(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or name.startswith("~"):
        raise UnsafePathError(name)
    return name


def parse_manifest(data: object, source: str | Path = MANIFEST_FILENAME) -> Manifest:
    """Validate a decoded manifest and return it; raises :class:`ManifestError` on any problem."""
    if not isinstance(data, dict):
        raise ManifestError(source, "top level must be a JSON object")
    bad = _unencodable_key(data)
    if bad is not None:
        # JSON's \ud800 escapes decode to lone surrogates, which no terminal, file or report can encode.
        raise ManifestError(source, f"{bad!r} holds a lone surrogate (such as \\ud800): not valid Unicode text")
    fmt, version = data.get("format"), data.get("format_version")
    if fmt != FORMAT_NAME:
        raise UnsupportedFormatError(fmt, [FORMAT_NAME])
    if version not in SUPPORTED_FORMAT_VERSIONS or isinstance(version, bool):
        raise UnsupportedFormatError(f"{fmt} v{version}", [f"{FORMAT_NAME} v{v}" for v in
                                                             SUPPORTED_FORMAT_VERSIONS])
    reader = _Reader(data, source)
    files_obj = reader.obj("files")
    head = _head_spec(reader, data.get("head"))
    files = ModelFiles(
        model=reader.path(files_obj, "model"),
        weights=reader.path(files_obj, "weights") if head is None else _optional_path(reader, files_obj, "weights"),
        bias=_optional_path(reader, files_obj, "bias"),
        labels=_optional_path(reader, files_obj, "labels"),
        head=reader.path(files_obj, "head") if head is not None else _optional_path(reader, files_obj, "head"),
        gradient=(reader.path(files_obj, "gradient") if head is not None
                  else _optional_path(reader, files_obj, "gradient")),
    )
    if head is not None and files.weights is not None:
        raise ManifestError(source, "a graph head has no dense weights: 'files.weights' must be null")
    if head is None and (files.head is not None or files.gradient is not None):
        raise ManifestError(source, "'files.head'/'files.gradient' need a \"head\": {\"kind\": \"graph\"} section")
    inp = reader.obj("input")
    input_spec = InputSpec(
        name=reader.string(inp, "name", "input.name"),
        layout=reader.choice(inp, "layout", LAYOUTS, "input.layout"),  # type: ignore[arg-type]
        height=reader.positive_int(inp, "height", "input.height", MAX_INPUT_SIDE),
        width=reader.positive_int(inp, "width", "input.width", MAX_INPUT_SIDE),
    )
    pre = reader.obj("preprocess")
    preprocess = Preprocess(
        color_order=reader.choice(pre, "color_order", COLOR_ORDERS, "preprocess.color_order"),  # type: ignore[arg-type]
        mean=reader.triple(pre, "mean", "preprocess.mean", positive=False),
        std=reader.triple(pre, "std", "preprocess.std", positive=True),
        resize=reader.choice(pre, "resize", RESIZE_MODES, "preprocess.resize"),  # type: ignore[arg-type]
    )
    out = reader.obj("outputs")
    outputs = OutputSpec(
        probabilities=reader.string(out, "probabilities", "outputs.probabilities"),
        features=reader.string(out, "features", "outputs.features"),
        features_layout=reader.choice(out, "features_layout", LAYOUTS, "outputs.features_layout"),  # type: ignore[arg-type]
    )
    num_classes = reader.positive_int(data, "num_classes", "num_classes", MAX_CLASSES)
    sha = data.get("sha256")
    if not isinstance(sha, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sha.items()):
        raise ManifestError(source, "'sha256' must map file names to hex digests")
    for role, file_name in files.present().items():
        digest = sha.get(file_name)
        if digest is None:
            raise ManifestError(source, f"'sha256' has no digest for the {role} file {file_name!r}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ManifestError(source, f"'sha256' digest for {file_name!r} is not 64 hex digits")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ManifestError(source, "'name' must be a non-empty string")
    if len(name) > MAX_NAME_CHARS or any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise ManifestError(source, f"'name' must be one line of at most {MAX_NAME_CHARS} printable characters")
    provenance = {k: v for k, v in data.items() if k not in _CORE_KEYS}
    return Manifest(name=name, files=files, input=input_spec, preprocess=preprocess, outputs=outputs,
                    num_classes=num_classes, sha256={k: v.lower() for k, v in sha.items()},
                    format=fmt, format_version=int(version), provenance=provenance, head=head, raw=data)


def read_manifest(folder: str | Path) -> Manifest:
    """Read and validate ``folder/manifest.json``."""
    path = Path(folder) / MANIFEST_FILENAME
    try:
        text = read_bounded(path, MAX_MANIFEST_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise ManifestError(path, "file not found (is this a model folder?)") from None
    except UnicodeDecodeError:
        raise ManifestError(path, "not UTF-8 text") from None
    except (OSError, RefusedFileError) as exc:
        raise ManifestError(path, f"cannot read: {failure_reason(exc)}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. integers over Python's digit limit, absurd nesting
        raise ManifestError(path, f"not valid JSON ({type(exc).__name__}: {str(exc)[:120]})") from None
    return parse_manifest(data, path)


def _unencodable_key(data: dict[str, Any]) -> str | None:
    """The dotted key of the first string (key or value) that cannot be encoded as UTF-8, else None."""
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "(top level)"
        elif isinstance(value, dict):
            children = []
            for key, item in value.items():
                label = f"{where}.{key}" if where else str(key)
                try:
                    str(key).encode("utf-8")
                except UnicodeEncodeError:
                    return label.encode("utf-8", "backslashreplace").decode("utf-8")
                children.append((label, item))
            stack.extend(reversed(children))  # depth first, in the file's order
        elif isinstance(value, list):
            stack.extend(reversed([(f"{where}[{i}]", item) for i, item in enumerate(value)]))
    return None


def _head_spec(reader: _Reader, value: object) -> HeadSpec | None:
    """The optional ``head`` section; absent or kind "linear" is the dense head of ``files.weights``."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise reader.fail("'head' must be an object")
    kind = value.get("kind")
    if kind not in HEAD_KINDS:
        raise reader.fail(f"'head.kind' is {kind!r}; this runtime knows {', '.join(HEAD_KINDS)}")
    if kind == "linear":
        return None
    names = {key: reader.string(value, key, f"head.{key}") if key in value else default
             for key, default in asdict(HeadSpec()).items() if key != "kind"}
    return HeadSpec("graph", **names)


def _optional_path(reader: _Reader, obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    return reader.path(obj, key)


class _Reader:
    """Typed field access that reports the offending key."""

    def __init__(self, data: dict[str, Any], source: str | Path) -> None:
        self.data = data
        self.source = source

    def fail(self, problem: str) -> ManifestError:
        return ManifestError(self.source, problem)

    def obj(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        if not isinstance(value, dict):
            raise self.fail(f"'{key}' must be an object")
        return value

    def string(self, obj: dict[str, Any], key: str, label: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(f"'{label}' must be a non-empty string")
        return value

    def path(self, obj: dict[str, Any], key: str) -> str:
        """A relative file path inside the folder: no NUL, encodable on this file system, no escape."""
        value = self.string(obj, key, f"files.{key}")
        try:
            os.fsencode(value)
        except UnicodeError:
            raise self.fail(f"'files.{key}' is not a valid file name") from None
        if "\x00" in value:
            raise self.fail(f"'files.{key}' contains a NUL character")
        return check_relative_path(value)

    def choice(self, obj: dict[str, Any], key: str, allowed: tuple[str, ...], label: str) -> str:
        value = obj.get(key)
        if value not in allowed:
            raise self.fail(f"'{label}' is {value!r}; expected one of {', '.join(allowed)}")
        return str(value)

    def positive_int(self, obj: dict[str, Any], key: str, label: str, maximum: int) -> int:
        value = obj.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= maximum:
            raise self.fail(f"'{label}' must be an integer in [1, {maximum}]")
        return value

    def triple(self, obj: dict[str, Any], key: str, label: str, *, positive: bool) -> tuple[float, float, float]:
        value = obj.get(key)
        if (not isinstance(value, list) or len(value) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
            raise self.fail(f"'{label}' must be a list of 3 finite numbers")
        try:
            numbers = tuple(float(v) for v in value)  # huge JSON integers overflow here
        except OverflowError:
            numbers = (math.inf,)
        if not all(math.isfinite(v) and abs(v) <= _MAX_PIXEL_CONSTANT for v in numbers):
            raise self.fail(f"'{label}' must be a list of 3 finite numbers (|value| ≤ {_MAX_PIXEL_CONSTANT:g})")
        if positive and not all(v >= _MIN_STD for v in numbers):
            raise self.fail(f"'{label}' values must be ≥ {_MIN_STD:g}")
        return (numbers[0], numbers[1], numbers[2])
