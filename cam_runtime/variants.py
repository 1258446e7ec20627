"""Derived model folders (INT8, FP16): timing a candidate graph, checking its fidelity and writing the folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .engine import CamEngine, default_threads
from .errors import GraphMismatchError, OutputExistsError
from .fidelity import (
    MIN_MEAN_CORRELATION,
    MIN_TOP1_AGREEMENT,
    FidelityError,
    SetFidelity,
    acceptance_problems,
    compare_on,
    image_files,
    load_tensors,
)
from .folder_writer import write_model_folder
from .model.manifest import Manifest
from .providers import import_onnxruntime


@dataclass
class EvaluationSets:
    """Preprocessed calibration and held-out images of one source engine."""

    calibration_files: list[Path]
    calibration: npt.NDArray[np.float32]
    calibration_sizes: list[tuple[int, int]]
    held_out: npt.NDArray[np.float32] | None = None
    held_out_sizes: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def load(cls, engine: CamEngine, calibration: str | Path, held_out: str | Path | None,
             limit: int | None = None) -> EvaluationSets:
        """Read both folders (each at most ``limit`` images) through ``engine``'s preprocessing."""
        files = image_files(calibration, limit, "--calibration")
        batch, sizes = load_tensors(engine, files)
        sets = cls(files, batch, sizes)
        if held_out is not None:
            sets.held_out, sets.held_out_sizes = load_tensors(engine, image_files(held_out, limit, "--held-out"))
        return sets


@dataclass
class VariantResult:
    """What deriving a folder produced: its manifest, the fidelity per image set, timings and choices."""

    manifest: Manifest | None
    fidelity: dict[str, SetFidelity]
    details: dict[str, Any]


def check_output(output: str | Path, force: bool) -> None:
    """Refuse an existing output folder before any expensive work."""
    if Path(output).exists() and not force:
        raise OutputExistsError(output)


def candidate_engine(source: CamEngine, model_path: Path, threads: int | None = None,
                     providers: list[Any] | None = None) -> CamEngine:
    """An engine that runs ``model_path`` with the source folder's head, labels and preprocessing."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as CamEngine.load does
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options,
                                       providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise GraphMismatchError(f"onnxruntime cannot load the derived model: "
                                 f"{str(exc).strip().splitlines()[0][:300]}") from None
    return CamEngine(source.folder, session, max_pixels=source.max_pixels)


def median_latency_ms(engine: CamEngine, sample: npt.NDArray[np.float32], runs: int = 20) -> float:
    """Median wall time of ``engine.run`` on ``sample`` after two warm-up runs."""
    for _ in range(2):
        engine.run(sample)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        engine.run(sample)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def evaluate(source: CamEngine, candidate: CamEngine, sets: EvaluationSets) -> dict[str, SetFidelity]:
    """Fidelity of ``candidate`` against ``source`` on the calibration and (if any) held-out images."""
    report = {"calibration": compare_on(source, candidate, sets.calibration, sets.calibration_sizes)}
    if sets.held_out is not None:
        report["held-out"] = compare_on(source, candidate, sets.held_out, sets.held_out_sizes)
    return report


def finish_variant(source: CamEngine, model_path: Path, output: str | Path, *, variant: str,
                   fidelity: dict[str, SetFidelity], details: dict[str, Any], force: bool,
                   accept_low_fidelity: bool, min_top1: float = MIN_TOP1_AGREEMENT,
                   min_correlation: float = MIN_MEAN_CORRELATION,
                   on_report: Callable[[dict[str, SetFidelity]], None] | None = None) -> VariantResult:
    """Report the fidelity, refuse a model below the thresholds (unless accepted), else write the folder."""
    if on_report is not None:
        on_report(fidelity)
    problems = acceptance_problems(fidelity, min_top1, min_correlation)
    if problems and not accept_low_fidelity:
        raise FidelityError(variant, problems)
    folder = source.folder
    manifest = folder.manifest
    provenance = {
        "variant": variant,
        "derived_from": {"name": manifest.name, "model_sha256": manifest.sha256[manifest.files.model],
                         "path": str(folder.root)},
        variant_key(variant): details,
        "fidelity": {"thresholds": {"min_top1_agreement": min_top1, "min_mean_map_correlation": min_correlation},
                     "accepted_below_thresholds": bool(problems),
                     "sets": {name: result.to_dict() for name, result in fidelity.items()}},
    }
    written = write_model_folder(
        output, model=model_path, weights=folder.weights,
        graph_head=None if folder.is_linear else (folder.path_of("head"), folder.path_of("gradient")),
        head_spec=manifest.head, num_classes=manifest.num_classes,
        bias=folder.bias if manifest.files.bias else None,
        labels=list(folder.labels) if manifest.files.labels else None,
        name=f"{manifest.name}-{variant}", input_spec=manifest.input, preprocess=manifest.preprocess,
        outputs=manifest.outputs, provenance=provenance, force=force)
    return VariantResult(written, fidelity, details)


def variant_key(variant: str) -> str:
    """The provenance key holding a variant's settings ("quantization" or "conversion")."""
    return "quantization" if variant == "int8" else "conversion"
