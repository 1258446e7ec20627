"""What every derived folder (INT8, FP16) shares: loading a candidate graph, timing it, writing the folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..engine import CamEngine
from ..errors import FidelityError, OutputExistsError
from ..model import Manifest, write_derived_folder
from ..model.manifest import MAX_NAME_CHARS
from .fidelity import MIN_MEAN_CORRELATION, MIN_TOP1_AGREEMENT, SetFidelity, acceptance_problems


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


def candidate_engine(source: CamEngine, graphs: Path | dict[str, Path], work: Path, *, threads: int | None = None,
                     device: str = "cpu", trust_graph: bool = False) -> CamEngine:
    """An engine for the derived ``graphs`` (a model path, or role → path) with the source's other files.

    The candidate is written as a complete derived folder under ``work`` and loaded like any folder, so it
    passes the same checks and gets the same session settings as the source.
    """
    replace = _as_replace(graphs)
    folder = work / f"candidate-{replace['model'].stem}"
    write_derived_folder(source.folder, folder, replace=dict(replace),
                         changes={"name": derived_name(source.manifest.name, "candidate")}, force=True)
    return CamEngine.load(folder, device=device, threads=threads, max_pixels=source.max_pixels,
                          trust_graph=trust_graph)


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


def finish_variant(source: CamEngine, graphs: Path | dict[str, Path], output: str | Path, *, variant: str,
                   fidelity: dict[str, SetFidelity], details: dict[str, Any], force: bool,
                   accept_low_fidelity: bool, min_top1: float = MIN_TOP1_AGREEMENT,
                   min_correlation: float = MIN_MEAN_CORRELATION,
                   on_report: Callable[[dict[str, SetFidelity]], None] | None = None) -> VariantResult:
    """Report the fidelity, refuse a model below the thresholds (unless accepted), else write the folder.

    The new folder is a copy of the source's manifest (every section, known or not) with the new graphs,
    ``name`` suffixed by the variant and the variant's provenance (settings, source, fidelity) added.
    """
    if on_report is not None:
        on_report(fidelity)
    problems = acceptance_problems(fidelity, min_top1, min_correlation)
    if problems and not accept_low_fidelity:
        raise FidelityError(variant, problems)
    folder = source.folder
    manifest = folder.manifest
    changes = {
        "name": derived_name(manifest.name, variant),
        "variant": variant,
        "derived_from": {"name": manifest.name, "model_sha256": manifest.sha256[manifest.files.model],
                         "path": str(folder.root)},
        variant_key(variant): details,
        "fidelity": {"thresholds": {"min_top1_agreement": min_top1, "min_mean_map_correlation": min_correlation},
                     "accepted_below_thresholds": bool(problems),
                     "sets": {name: result.to_dict() for name, result in fidelity.items()}},
    }
    written = write_derived_folder(folder, output, replace=dict(_as_replace(graphs)), changes=changes, force=force)
    return VariantResult(written, fidelity, details)


def _as_replace(graphs: Path | dict[str, Path]) -> dict[str, Path]:
    return {"model": graphs} if isinstance(graphs, Path) else graphs


def derived_name(name: str, suffix: str) -> str:
    """``name-suffix``, the source name shortened so the result stays within the manifest's limit."""
    return f"{name[:MAX_NAME_CHARS - len(suffix) - 1]}-{suffix}"


def variant_key(variant: str) -> str:
    """The provenance key holding a variant's settings ("quantization" or "conversion")."""
    return "quantization" if variant == "int8" else "conversion"
