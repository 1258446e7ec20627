"""Request parameters, image bodies and response rendering (plain functions, run in a thread pool)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cam_runtime.defaults import BOX_THRESHOLD
from cam_runtime.engine import CamEngine
from cam_runtime.errors import BadRequestError, InvalidArgumentError
from cam_runtime.imaging import DecodedImage
from cam_runtime.outputs import encode_image, strict_json
from cam_runtime.render import colormap_id
from cam_runtime.results import ExplainResult

from .batcher import ExplainParams

RETURNS = ("json", "overlay", "heatmap")
IMAGES = ("none", "overlay", "heatmap", "both")
FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg"}


@dataclass(frozen=True)
class OutputOptions:
    """How a result is sent back: JSON (with optional base64 images and raw maps) or one image."""

    returns: str = "json"
    images: str = "overlay"
    image_format: str = "png"
    alpha: float = 0.5
    colormap: str = "jet"
    boxes: bool = True
    target: int = 0
    maps: bool = True


def parse_options(values: Mapping[str, Any], *, images_default: str = "overlay") -> tuple[ExplainParams, OutputOptions]:
    """Explain parameters and output options from query parameters or a JSON ``parameters`` object."""
    known = {"method", "top_k", "classes", "class", "boxes", "all_boxes", "box_threshold", "score", "return",
             "images", "format", "alpha", "colormap", "target", "maps"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidArgumentError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    classes = _classes(values.get("classes", values.get("class")))
    params = ExplainParams(method=str(values.get("method", "cam")).lower(), top_k=_int(values, "top_k", 1),
                           classes=classes, box_threshold=_float(values, "box_threshold", BOX_THRESHOLD),
                           all_boxes=_bool(values, "all_boxes", False), score=str(values.get("score", "logit")))
    returns = str(values.get("return", "json")).lower()
    if returns not in RETURNS:
        raise InvalidArgumentError(f"return must be one of {', '.join(RETURNS)}, got {returns!r}")
    images = str(values.get("images", images_default)).lower()
    if images not in IMAGES:
        raise InvalidArgumentError(f"images must be one of {', '.join(IMAGES)}, got {images!r}")
    fmt = str(values.get("format", "png")).lower()
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"format must be png or jpeg, got {fmt!r}")
    alpha = _float(values, "alpha", 0.5)
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"alpha must be in [0, 1], got {alpha}")
    colormap = str(values.get("colormap", "jet"))
    colormap_id(colormap)
    target = _int(values, "target", 0)
    n_targets = len(classes) if classes is not None else params.top_k
    if not 0 <= target < max(n_targets, 1):
        raise InvalidArgumentError(f"target must be in [0, {n_targets - 1}], got {target}")
    return params, OutputOptions(returns=returns, images=images, image_format=FORMATS[fmt], alpha=alpha,
                                 colormap=colormap, boxes=_bool(values, "boxes", True), target=target,
                                 maps=_bool(values, "maps", True))


def _classes(value: Any) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    if not all(isinstance(c, str | int) and not isinstance(c, bool) for c in items):
        raise InvalidArgumentError("classes must be ids or labels")
    return tuple(str(c).strip() for c in items)


def _int(values: Mapping[str, Any], name: str, default: int) -> int:
    value = values.get(name, default)
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}") from None


def _float(values: Mapping[str, Any], name: str, default: float) -> float:
    value = values.get(name, default)
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(result):
        raise InvalidArgumentError(f"{name} must be finite, got {value!r}")
    return result


def _bool(values: Mapping[str, Any], name: str, default: bool) -> bool:
    value = values.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidArgumentError(f"{name} must be true or false, got {value!r}")


# --- bodies ------------------------------------------------------------------------------------------


def decode_upload(engine: CamEngine, data: bytes, source: str) -> DecodedImage:
    """Decode one uploaded image with the engine's pixel limit."""
    return engine.load_image(data, source=source)


def parse_instances(engine: CamEngine, body: bytes, max_instances: int) -> tuple[list[DecodedImage], dict[str, Any]]:
    """KServe V1 ``{"instances": [{"b64": ...}, ...], "parameters": {...}}`` → decoded images and parameters."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequestError(f"body is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise BadRequestError('expected a JSON object {"instances": [{"b64": "..."}], "parameters": {...}}')
    instances: list[Any] = payload["instances"]
    parameters = payload.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequestError('"parameters" must be a JSON object')
    if not instances:
        raise BadRequestError('"instances" is empty')
    if len(instances) > max_instances:
        raise BadRequestError(f'"instances" has {len(instances)} items, more than the {max_instances} allowed')
    images = []
    for i, instance in enumerate(instances):
        encoded = instance.get("b64") if isinstance(instance, dict) else instance
        if not isinstance(encoded, str):
            raise BadRequestError(f'instance {i}: expected {{"b64": "<base64 image>"}} or a base64 string')
        images.append(engine.load_image(b64decode(encoded, f"instance {i}"), source=f"instance {i}"))
    return images, parameters


def b64decode(text: str, what: str) -> bytes:
    """Strict base64 (standard or URL-safe alphabet; a data: URL prefix is allowed)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text.encode("ascii"))
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BadRequestError(f"{what}: invalid base64") from None


# --- responses -----------------------------------------------------------------------------------------


def render_image(result: ExplainResult, options: OutputOptions) -> tuple[bytes, str]:
    """The overlay or coloured heatmap of ``options.target`` as encoded bytes and its media type."""
    if options.returns == "heatmap":
        bgr = result.colored_heatmap(options.target, colormap=options.colormap, channel_order="BGR")
    else:
        bgr = result.overlay(options.target, heatmap_weight=options.alpha, colormap=options.colormap,
                             draw_boxes=options.boxes, channel_order="BGR")
    return encode_image(bgr, options.image_format), MEDIA_TYPES[options.image_format]


def result_json(result: ExplainResult, options: OutputOptions) -> dict[str, Any]:
    """The result's summary plus, per target, the raw map at feature resolution and base64 images."""
    data = result.to_dict()
    for index, (target, entry) in enumerate(zip(result.targets, data["targets"], strict=True)):
        if not options.boxes:
            entry.pop("boxes", None)
        if options.maps:
            entry["map"] = np.round(target.raw.astype(np.float64), 6).tolist()
        if options.images in ("overlay", "both"):
            bgr = result.overlay(index, heatmap_weight=options.alpha, colormap=options.colormap,
                                 draw_boxes=options.boxes, channel_order="BGR")
            entry["overlay"] = _b64(encode_image(bgr, options.image_format))
        if options.images in ("heatmap", "both"):
            bgr = result.colored_heatmap(index, colormap=options.colormap, channel_order="BGR")
            entry["heatmap"] = _b64(encode_image(bgr, options.image_format))
    if options.images != "none":
        data["image_format"] = MEDIA_TYPES[options.image_format]
    return data


def prediction_json(result: ExplainResult) -> dict[str, Any]:
    """A KServe ``predictions`` item: the best class and the top-k."""
    best = result.top_k[0]
    return {**best.to_dict(), "top_k": [p.to_dict() for p in result.top_k]}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def dumps(data: Any) -> bytes:
    """Compact JSON bytes."""
    return strict_json(data, compact=True).encode("utf-8")


def batch_json(results: Sequence[ExplainResult], options: OutputOptions) -> list[dict[str, Any]]:
    """:func:`result_json` for every result."""
    return [result_json(r, options) for r in results]
