"""cam_runtime.jobs.evaluate_folder: the evaluation job as a library (method names, boxes, outputs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cam_runtime.engine import CamEngine
from cam_runtime.errors import UnknownMethodError
from cam_runtime.ground_truth_boxes import read_boxes
from cam_runtime.jobs.evaluate_folder import PLOT_FILE, REPORT_FILE, evaluate_folder, method_names, write_evaluation
from cam_runtime.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "models" / "fixtures" / "shapes"
TEST_SET = ROOT / "models" / "fixtures" / "shapes-test"


def test_method_names() -> None:
    assert method_names(["all"]) == list(METHODS) and method_names(["ALL"]) == list(METHODS)
    assert method_names(["cam", "Grad-CAM"]) == ["cam", "Grad-CAM"]  # aliases are resolved by evaluate()
    with pytest.raises(UnknownMethodError, match="nope"):
        method_names(["cam", "nope"])


def test_evaluate_folder_from_a_file_or_read_boxes(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rows = (TEST_SET / "boxes.csv").read_text().splitlines()[:5]
    for row in rows[1:]:
        shutil.copy(TEST_SET / "images" / row.split(",")[0], images)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("\n".join(rows) + "\n")
    engine = CamEngine.load(FIXTURE, device="cpu", threads=1)
    from_file = evaluate_folder(engine, images, boxes, ["cam"], steps=4, adcc=False)
    from_boxes = evaluate_folder(engine, images, read_boxes(boxes), ["cam"], steps=4, adcc=False)
    assert from_file.to_dict(True)["methods"] == from_boxes.to_dict(True)["methods"]
    assert from_file.settings["evaluated"] == 4
    json_path, plot_path = write_evaluation(from_file, tmp_path / "out")
    assert json_path.name == REPORT_FILE and plot_path.name == PLOT_FILE and plot_path.stat().st_size > 0
    assert json.loads(json_path.read_text())["methods"][0]["method"] == "cam"
