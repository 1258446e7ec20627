"""FP16 model folders for GPUs: float16 weights and compute, float32 inputs and outputs kept."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from ..engine import CamEngine
from ..errors import InvalidArgumentError
from .common import VariantResult, candidate_engine, check_output, finish_variant, median_latency_ms
from .fidelity import MIN_MEAN_CORRELATION, MIN_TOP1_AGREEMENT, EvaluationSets, SetFidelity, fidelity_report


def convert_model(model: Path, output: Path) -> Path:
    """float32 → float16 with onnxruntime's converter, graph inputs/outputs left float32; returns ``output``."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise InvalidArgumentError(f"FP16 conversion needs onnx and onnxruntime's transformers tools "
                                   f"(pip install 'cam-runtime[quantize]'): {exc}") from None
    converted = convert_float_to_float16(onnx.load(str(model)), keep_io_types=True)
    onnx.save(converted, str(output))
    return output


def fp16_folder(source: str | Path | CamEngine, output: str | Path, *, calibration: str | Path,
                held_out: str | Path | None = None, device: str = "auto", max_images: int | None = 64,
                threads: int | None = None, force: bool = False, accept_low_fidelity: bool = False,
                min_top1: float = MIN_TOP1_AGREEMENT, min_correlation: float = MIN_MEAN_CORRELATION,
                timing_runs: int = 10, on_report: Callable[[dict[str, SetFidelity]], None] | None = None,
                log: Callable[[str], None] | None = None, trust_graph: bool = False) -> VariantResult:
    """Write an FP16 copy of a model folder, checked against float32 on the images in ``calibration``.

    The fidelity check runs the FP16 graph on ``device`` (CUDA when available with "auto"); on a CPU it
    works but may be slower than float32 — FP16 is meant for GPUs. A graph head's ``head.onnx`` and
    ``gradient.onnx`` are converted too (float32 inputs and outputs kept), and the fidelity maps go through them.
    """
    check_output(output, force)
    say = log or (lambda _message: None)
    engine = source if isinstance(source, CamEngine) else CamEngine.load(source, device="cpu", threads=threads,
                                                                                trust_graph=trust_graph)
    sets = EvaluationSets.load(engine, calibration, held_out, max_images)
    with tempfile.TemporaryDirectory(prefix="camr-fp16-") as tmp:
        roles = ("model", "head", "gradient") if not engine.folder.is_linear else ("model",)
        graphs = {role: convert_model(engine.folder.path_of(role), Path(tmp) / f"fp16-{role}.onnx") for role in roles}
        say(f"converted {', '.join(roles)} to float16 (inputs and outputs kept float32)")
        candidate = candidate_engine(engine, graphs, Path(tmp), threads=threads, device=device,
                                     trust_graph=trust_graph)
        sample = sets.calibration[:1]
        latency = {"fp32_cpu": median_latency_ms(engine, sample, timing_runs),
                   f"fp16_{candidate.providers[0].removesuffix('ExecutionProvider').lower()}":
                       median_latency_ms(candidate, sample, timing_runs)}
        fidelity = fidelity_report(engine, candidate, sets)
        details = {"tool": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True,
                   "graphs": list(roles), "checked_on": candidate.providers[0],
                   "batch1_latency_ms": {k: round(v, 3) for k, v in latency.items()}}
        return finish_variant(engine, graphs, output, variant="fp16", fidelity=fidelity, details=details,
                              force=force, accept_low_fidelity=accept_low_fidelity, min_top1=min_top1,
                              min_correlation=min_correlation, on_report=on_report)
