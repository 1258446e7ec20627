"""INT8 model folders: onnxruntime static quantization (QDQ, per-channel weights), U8S8 vs S8S8 by measurement."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..engine import CamEngine
from ..errors import InvalidArgumentError
from .common import VariantResult, candidate_engine, check_output, finish_variant, median_latency_ms
from .fidelity import MIN_MEAN_CORRELATION, MIN_TOP1_AGREEMENT, EvaluationSets, SetFidelity, fidelity_report

ACTIVATIONS: dict[str, str] = {"u8": "QUInt8", "s8": "QInt8"}
"""Activation types compared: U8S8 (uint8 activations, the classic VNNI path) and S8S8; weights are always int8."""
CALIBRATION_METHODS: dict[str, str] = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def _quantization_api() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:  # the quantization tools need the onnx package
        raise InvalidArgumentError(f"INT8 quantization needs onnxruntime's quantization tools and onnx "
                                   f"(pip install 'cam-runtime[quantize]'): {exc}") from None
    return quantization


def _reader(input_name: str, batch: npt.NDArray[np.float32]) -> Any:
    """A CalibrationDataReader that feeds the calibration images one at a time."""
    quantization = _quantization_api()

    class _Images(quantization.CalibrationDataReader):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self._items: Iterator[dict[str, npt.NDArray[np.float32]]] = iter(
                {input_name: batch[i:i + 1]} for i in range(len(batch)))

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            return next(self._items, None)

    return _Images()


def quantize_model(model: Path, output: Path, calibration: npt.NDArray[np.float32], input_name: str, *,
                   activation: str, calibrate_method: str = "minmax", cache: Path | None = None) -> Path:
    """Static QDQ quantization of one ONNX file with per-channel int8 weights; returns ``output``."""
    quantization = _quantization_api()
    quantization.quantize_static(
        str(model), str(output), _reader(input_name, calibration),
        quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        activation_type=getattr(quantization.QuantType, ACTIVATIONS[activation]),
        weight_type=quantization.QuantType.QInt8,
        calibrate_method=getattr(quantization.CalibrationMethod, CALIBRATION_METHODS[calibrate_method]),
        calibration_cache_path=str(cache) if cache else None)
    return output


def _preprocess_for_quantization(model: Path, output: Path) -> Path:
    """onnxruntime's recommended pre-pass (shape inference, graph optimisation); the original if it fails.

    Symbolic shape inference (it needs sympy) is skipped: ONNX's own shape inference covers CNNs.
    """
    try:
        _quantization_api().shape_inference.quant_pre_process(str(model), str(output), skip_symbolic_shape=True)
    except Exception:  # the pre-pass is an optimisation; quantization works without it
        return model
    return output


def quantize_folder(source: str | Path | CamEngine, output: str | Path, *, calibration: str | Path,
                    held_out: str | Path | None = None, activation: str = "auto", calibrate_method: str = "minmax",
                    max_images: int | None = 64, threads: int | None = None, force: bool = False,
                    accept_low_fidelity: bool = False, min_top1: float = MIN_TOP1_AGREEMENT,
                    min_correlation: float = MIN_MEAN_CORRELATION, timing_runs: int = 20,
                    on_report: Callable[[dict[str, SetFidelity]], None] | None = None,
                    log: Callable[[str], None] | None = None, trust_graph: bool = False) -> VariantResult:
    """Write an INT8 copy of a model folder, calibrated on the images in ``calibration``.

    ``activation`` "auto" quantizes both U8S8 and S8S8 and keeps the faster on this CPU (median batch-1
    latency); "u8" or "s8" forces one. Only the model graph is quantized: a graph head's ``head.onnx`` and
    ``gradient.onnx`` (a small share of the compute, and gradients need the range) are copied in float32.
    The fidelity against the float32 folder (calibration and held-out images) is passed to ``on_report``,
    stored in the manifest, and below the thresholds raises :class:`~cam_runtime.errors.FidelityError`
    unless ``accept_low_fidelity``.
    """
    if activation not in ("auto", *ACTIVATIONS):
        raise InvalidArgumentError(f"activation must be auto, {' or '.join(ACTIVATIONS)}, got {activation!r}")
    if calibrate_method not in CALIBRATION_METHODS:
        raise InvalidArgumentError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, "
                                   f"got {calibrate_method!r}")
    check_output(output, force)
    say = log or (lambda _message: None)
    engine = source if isinstance(source, CamEngine) else CamEngine.load(source, device="cpu", threads=threads,
                                                                                trust_graph=trust_graph)
    sets = EvaluationSets.load(engine, calibration, held_out, max_images)
    say(f"calibrating on {len(sets.calibration)} images")
    input_name = engine.manifest.input.name
    sample = sets.calibration[:1]
    candidates = list(ACTIVATIONS) if activation == "auto" else [activation]
    with tempfile.TemporaryDirectory(prefix="camr-quantize-") as tmp:
        work = Path(tmp)
        prepared = _preprocess_for_quantization(engine.folder.model_path, work / "prepared.onnx")
        latency = {"fp32": median_latency_ms(engine, sample, timing_runs)}
        built: dict[str, tuple[Path, CamEngine]] = {}
        for act in candidates:
            say(f"quantizing {act.upper()}S8 (QDQ, per-channel, {calibrate_method})")
            path = quantize_model(prepared, work / f"{act}.onnx", sets.calibration, input_name, activation=act,
                                  calibrate_method=calibrate_method, cache=work / "calibration.cache")
            candidate = candidate_engine(engine, path, work, threads=threads, trust_graph=trust_graph)
            latency[f"{act}s8"] = median_latency_ms(candidate, sample, timing_runs)
            built[act] = (path, candidate)
        chosen = min(built, key=lambda act: latency[f"{act}s8"])
        path, candidate = built[chosen]
        say(f"chose {chosen.upper()}S8: batch-1 latency " +
            ", ".join(f"{k} {v:.2f} ms" for k, v in latency.items()))
        fidelity = fidelity_report(engine, candidate, sets)
        details = {"tool": "onnxruntime.quantization.quantize_static", "graphs": ["model"],
                   "format": "QDQ", "per_channel": True,
                   "weights": "int8", "activations": "uint8" if chosen == "u8" else "int8",
                   "chosen": f"{chosen.upper()}S8", "candidates": [f"{a.upper()}S8" for a in candidates],
                   "calibration_method": calibrate_method, "calibration_images": len(sets.calibration),
                   "batch1_latency_ms": {k: round(v, 3) for k, v in latency.items()},
                   "speedup_vs_fp32": round(latency["fp32"] / latency[f"{chosen}s8"], 2)}
        return finish_variant(engine, path, output, variant="int8", fidelity=fidelity, details=details,
                              force=force, accept_low_fidelity=accept_low_fidelity, min_top1=min_top1,
                              min_correlation=min_correlation, on_report=on_report)
