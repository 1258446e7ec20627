"""bf16 model folders for CPUs that execute bfloat16 natively (AVX512-BF16, AMX), run by OpenVINO's runtime.

The graph is the float32 one; the folder's manifest says ``variant: bf16`` and the engine runs it with
OpenVINO's bf16 inference-precision hint (:mod:`cam_runtime.openvino_runtime`). Like INT8 and FP16 it is
written only after its fidelity against float32 (onnxruntime CPU) passes the thresholds, on the calibration
and held-out images.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..engine import CamEngine
from ..openvino_runtime import OpenVINOSession, bf16_available, cpu_capabilities, cpu_flags
from .common import VariantResult, check_output, finish_variant, median_latency_ms
from .fidelity import EvaluationSets, SetFidelity, fidelity_report

BF16_MIN_TOP1 = 0.99
"""bf16 keeps float32's exponent range: top-1 must agree on at least 99% of the images (issue 19)."""
BF16_MIN_CORRELATION = 0.999
"""…and the maps' mean Pearson correlation with float32's must reach 0.999."""


def openvino_engine(source: CamEngine, precision: str, threads: int | None = None) -> CamEngine:
    """``source``'s folder run by OpenVINO's runtime at ``precision`` (fp32 or bf16)."""
    session = OpenVINOSession(source.folder.model_path, precision=precision, threads=threads)
    return CamEngine(source.folder, session, max_pixels=source.max_pixels)


def bf16_folder(source: str | Path | CamEngine, output: str | Path, *, calibration: str | Path,
                held_out: str | Path | None = None, max_images: int | None = 64, threads: int | None = None,
                force: bool = False, accept_low_fidelity: bool = False, min_top1: float = BF16_MIN_TOP1,
                min_correlation: float = BF16_MIN_CORRELATION, timing_runs: int = 10,
                on_report: Callable[[dict[str, SetFidelity]], None] | None = None,
                log: Callable[[str], None] | None = None, trust_graph: bool = False) -> VariantResult:
    """Write a bf16 copy of a model folder, checked against float32 (onnxruntime CPU) on ``calibration``.

    Refused (PrecisionNotAvailableError) where OpenVINO does not report native BF16 on this CPU.
    """
    check_output(output, force)
    say = log or (lambda _message: None)
    engine = source if isinstance(source, CamEngine) else CamEngine.load(source, device="cpu", threads=threads,
                                                                         trust_graph=trust_graph)
    candidate = openvino_engine(engine, "bf16", threads)  # raises first where the CPU has no bf16
    sets = EvaluationSets.load(engine, calibration, held_out, max_images)
    say(f"bf16 on OpenVINO (CPU capabilities: {', '.join(cpu_capabilities())})")
    sample = sets.calibration[:1]
    fp32_ov = openvino_engine(engine, "fp32", threads)
    latency = {"fp32_onnxruntime": median_latency_ms(engine, sample, timing_runs),
               "fp32_openvino": median_latency_ms(fp32_ov, sample, timing_runs),
               "bf16_openvino": median_latency_ms(candidate, sample, timing_runs)}
    fidelity = fidelity_report(engine, candidate, sets)
    details = {"precision": "bf16", "runtime": "openvino", "inference_precision_hint": "bf16",
               "checked_on": "OpenVINORuntime", "cpu_capabilities": cpu_capabilities(), "cpu_flags": cpu_flags(),
               "batch1_latency_ms": {k: round(v, 3) for k, v in latency.items()}}
    return finish_variant(engine, engine.folder.model_path, output, variant="bf16", fidelity=fidelity,
                          details=details, force=force, accept_low_fidelity=accept_low_fidelity,
                          min_top1=min_top1, min_correlation=min_correlation, on_report=on_report)


__all__ = ["bf16_available", "bf16_folder", "openvino_engine"]
