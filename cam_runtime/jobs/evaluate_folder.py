"""The evaluation job: localisation and faithfulness metrics of CAM methods on a folder of images with
ground-truth boxes, and its outputs (``evaluation.json``, ``curves.png``), for the CLI or any other caller."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from cam_runtime.defaults import BOX_THRESHOLD

if TYPE_CHECKING:
    from cam_runtime.engine import CamEngine
    from cam_runtime.evaluation import Baseline, EvaluationReport
    from cam_runtime.ground_truth_boxes import Annotations

REPORT_FILE = "evaluation.json"
PLOT_FILE = "curves.png"


def method_names(methods: list[str]) -> list[str]:
    """The methods to evaluate: ``["all"]`` means every method; unknown names raise UnknownMethodError."""
    from cam_runtime.errors import UnknownMethodError
    from cam_runtime.methods import ALIASES, METHODS

    names = list(METHODS) if [m.lower() for m in methods] == ["all"] else methods
    for name in names:
        if ALIASES.get(name.lower(), name.lower()) not in METHODS:
            raise UnknownMethodError(name, ["all", *METHODS])
    return names


def evaluate_folder(engine: CamEngine, images: Path, boxes: Path | Annotations, methods: list[str], *,
                    batch_size: int = 16,
                    steps: int = 32, baseline: str = "blur", box_threshold: float = BOX_THRESHOLD,
                    faithfulness: bool = True, adcc: bool = True, road: bool = False,
                    seed: int = 0) -> EvaluationReport:
    """Evaluate every method on the images the ground-truth boxes name (a boxes file, or boxes already read)."""
    from cam_runtime.evaluation import evaluate
    from cam_runtime.ground_truth_boxes import read_boxes
    from cam_runtime.road import DEFAULT_PERCENTILES

    names = method_names(methods)
    annotations = read_boxes(boxes) if isinstance(boxes, str | Path) else boxes
    mode = cast("Baseline", baseline)  # evaluate() checks the value
    return evaluate(engine, images, annotations, names, box_threshold=box_threshold,
                    steps=steps if faithfulness else None, baseline=mode, batch_size=batch_size, adcc=adcc,
                    road_percentiles=DEFAULT_PERCENTILES if road else None, seed=seed)


def write_evaluation(report: EvaluationReport, output: Path, *, per_image: bool = True) -> tuple[Path, Path]:
    """``evaluation.json`` and ``curves.png`` in ``output``, each written atomically."""
    from cam_runtime.curves_plot import curves_png
    from cam_runtime.outputs import strict_json, write_bytes_atomic, write_text_atomic

    deletion = {m.method: c for m in report.methods if (c := m.mean_curve("deletion")) is not None}
    insertion = {m.method: c for m in report.methods if (c := m.mean_curve("insertion")) is not None}
    plot = write_bytes_atomic(output / PLOT_FILE, curves_png(deletion, insertion))
    data = strict_json(report.to_dict(per_image), indent=2) + "\n"
    return write_text_atomic(output / REPORT_FILE, data), plot
