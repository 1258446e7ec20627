"""Evaluation metrics on maps with known answers, box readers (CSV, VOC) and the ``camr evaluate`` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cam_runtime.boxes import box_iou
from cam_runtime.cli import app
from cam_runtime.curves_plot import curves_png
from cam_runtime.engine import CamEngine
from cam_runtime.errors import AnnotationError, InvalidArgumentError
from cam_runtime.evaluation import (
    Faithfulness,
    Sample,
    auc,
    baseline_image,
    evaluate_method,
    load_samples,
    map_box_iou,
    peak,
    pixels_to_tensor,
    pointing_hit,
)
from cam_runtime.ground_truth_boxes import GroundTruthBox, read_boxes, read_boxes_csv, read_voc_xml

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "models" / "fixtures" / "shapes"
TEST_SET = ROOT / "models" / "fixtures" / "shapes-test"


# --- localisation metrics on synthetic maps ---------------------------------------------------------------------


def box_map(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """A map that is 1 exactly inside the box and 0 elsewhere."""
    heatmap = np.zeros(shape, dtype=np.float32)
    heatmap[box[1]:box[3], box[0]:box[2]] = 1.0
    return heatmap


def test_map_equal_to_the_box_scores_perfectly() -> None:
    gt = GroundTruthBox(10, 5, 30, 25)
    heatmap = box_map((40, 50), gt.as_tuple())
    assert pointing_hit(heatmap, [gt])
    assert map_box_iou(heatmap, [gt], threshold=0.5) == pytest.approx(1.0)


def test_peak_outside_the_box_misses() -> None:
    gt = GroundTruthBox(10, 10, 20, 20)
    heatmap = np.zeros((40, 40), dtype=np.float32)
    heatmap[30, 35] = 1.0
    assert peak(heatmap) == (35, 30)
    assert not pointing_hit(heatmap, [gt])
    assert pointing_hit(heatmap, [gt, GroundTruthBox(30, 25, 40, 40)])  # any box of the target counts
    assert map_box_iou(heatmap, [gt]) == 0.0


def test_empty_map_never_hits() -> None:
    heatmap = np.zeros((20, 20), dtype=np.float32)
    assert peak(heatmap) is None
    assert not pointing_hit(heatmap, [GroundTruthBox(0, 0, 20, 20)])
    assert map_box_iou(heatmap, [GroundTruthBox(0, 0, 20, 20)]) == 0.0


def test_box_iou_known_values() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    # a box twice as wide as the ground truth: IoU 0.5, CorLoc's threshold
    assert map_box_iou(box_map((40, 40), (0, 0, 20, 10)), [GroundTruthBox(0, 0, 10, 10)], 0.5) == pytest.approx(0.5)


def test_auc_and_confidence_scores() -> None:
    assert auc([0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert auc(np.linspace(0, 1, 11)) == pytest.approx(0.5)
    assert auc([1.0, 0.0]) == pytest.approx(0.5)
    with pytest.raises(InvalidArgumentError):
        auc([1.0])
    f = Faithfulness(np.array([1.0, 0.0]), np.array([0.0, 1.0]), full_probability=0.8, masked_probability=0.2)
    assert f.drop == pytest.approx(75.0)
    assert not f.increase
    g = Faithfulness(np.array([1.0, 0.0]), np.array([0.0, 1.0]), full_probability=0.5, masked_probability=0.9)
    assert g.drop == 0.0 and g.increase


def test_baselines() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (32, 32, 3)).astype(np.float32)
    mean = baseline_image(pixels, "mean")
    assert np.allclose(mean, pixels.mean(axis=(0, 1)), atol=1e-3)
    blur = baseline_image(pixels, "blur")
    assert blur.shape == pixels.shape and blur.std() < pixels.std() / 4
    with pytest.raises(InvalidArgumentError):
        baseline_image(pixels, "zeros")  # type: ignore[arg-type]


# --- faithfulness on the trained fixture ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def fixture_engine() -> CamEngine:
    """The trained shapes fixture."""
    return CamEngine.load(FIXTURE, device="cpu")


@pytest.fixture(scope="session")
def subset(fixture_engine: CamEngine) -> list[Sample]:
    """The first 30 held-out images."""
    annotations = read_boxes(TEST_SET / "boxes.csv")
    names = sorted(annotations)[:30]
    samples, _ = load_samples(fixture_engine, TEST_SET / "images", {n: annotations[n] for n in names})
    return samples


def test_perfect_map_beats_random_map(fixture_engine: CamEngine, subset: list[Sample]) -> None:
    size = fixture_engine.manifest.input.height
    scale = size / subset[0].load(fixture_engine).height
    perfect = [box_map((size, size), tuple(round(v * scale) for v in s.boxes[0].as_tuple())) for s in subset]
    rng = np.random.default_rng(0)
    noise = [rng.uniform(0, 1, (size, size)).astype(np.float32) for _ in subset]
    runs = {name: evaluate_method(fixture_engine, subset, "cam", steps=16, saliency_override=maps).summary()
            for name, maps in (("perfect", perfect), ("random", noise))}
    cam = evaluate_method(fixture_engine, subset, "cam", steps=16).summary()
    print({k: (v["deletion_auc"], v["insertion_auc"]) for k, v in {**runs, "cam": cam}.items()})
    assert runs["perfect"]["deletion_auc"] < runs["random"]["deletion_auc"] - 0.1
    assert runs["perfect"]["insertion_auc"] > runs["random"]["insertion_auc"] + 0.1
    assert cam["deletion_auc"] < runs["random"]["deletion_auc"]
    assert cam["insertion_auc"] > runs["random"]["insertion_auc"]
    assert 0.0 <= cam["average_drop"] <= 100.0 and 0.0 <= cam["increase_in_confidence"] <= 100.0


@pytest.mark.parametrize("folder", ["fixture", "tiny_nchw"])
def test_float_preprocessing_matches_the_runtime(folder: str, fixture_engine: CamEngine,
                                                 request: pytest.FixtureRequest) -> None:
    """Masked/blended images go through a float path; on integer pixels it must equal the uint8 pipeline."""
    engine = fixture_engine if folder == "fixture" else CamEngine.load(request.getfixturevalue(folder))
    spec = engine.manifest.input
    bgr = np.random.default_rng(1).integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)
    expected = engine.preprocessor.tensor(bgr)
    np.testing.assert_allclose(pixels_to_tensor(engine, bgr.astype(np.float32)), expected, rtol=1e-5, atol=1e-5)


def test_faithfulness_report_is_json(fixture_engine: CamEngine, subset: list[Sample]) -> None:
    report = evaluate_method(fixture_engine, subset[:5], "gradcam", steps=4, baseline="mean")
    data = json.loads(json.dumps(report.to_dict()))
    assert len(data["deletion_curve"]) == 5 and len(data["per_image"]) == 5
    first = report.images[0].faithfulness
    assert first is not None
    # step 0 of deletion and the last step of insertion are the untouched image
    assert first.deletion[0] == pytest.approx(first.full_probability, abs=1e-5)
    assert first.insertion[-1] == pytest.approx(first.full_probability, abs=1e-5)


# --- readers ---------------------------------------------------------------------------------------------------------


def test_csv_reader(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text("a.png,1,2,11,12,cat\na.png,20,20,30,30,dog\nb.png,0,0,5,5\n")
    boxes = read_boxes_csv(path)
    assert boxes["a.png"] == [GroundTruthBox(1, 2, 11, 12, "cat"), GroundTruthBox(20, 20, 30, 30, "dog")]
    assert boxes["b.png"] == [GroundTruthBox(0, 0, 5, 5, None)]
    with_header = tmp_path / "h.csv"
    with_header.write_text("filename,x0,y0,x1,y1,label\na.png,1,2,11,12,cat\n")
    assert read_boxes(with_header) == {"a.png": [GroundTruthBox(1, 2, 11, 12, "cat")]}


@pytest.mark.parametrize(("text", "problem"), [
    ("a.png,1,2,3\n", "expected filename"),
    ("a.png,1,2,x,4\n", "must be a number"),
    ("a.png,5,5,5,9\n", "empty box"),
    ("a.png,-1,0,5,9\n", "negative"),
    (",1,2,3,4\n", "empty filename"),
    ("filename,x0,y0,x1,y1\n", "no boxes"),
])
def test_bad_csv_gives_one_line_error(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=problem) as info:
        read_boxes(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="not found"):
        read_boxes(tmp_path / "nope.csv")
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(AnnotationError, match="UTF-8"):
        read_boxes(binary)
    with pytest.raises(AnnotationError, match=r"expected a \.csv"):
        read_boxes(tmp_path / "boxes.json")
    with pytest.raises(AnnotationError, match=r"no \.xml"):
        read_boxes(tmp_path)


def test_voc_reader_matches_csv() -> None:
    csv_boxes = read_boxes(TEST_SET / "boxes.csv")
    for xml in sorted((TEST_SET / "voc").glob("*.xml")):
        name, boxes = read_voc_xml(xml)
        assert boxes == csv_boxes[name]


VOC = """<annotation><filename>x.png</filename>
<object><name>cat</name><bndbox><xmin>{xmin}</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object>
</annotation>"""


@pytest.mark.parametrize(("text", "problem"), [
    ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><annotation/>', "DOCTYPE/ENTITY"),
    ('<!ENTITY x SYSTEM "file:///etc/passwd"><annotation/>', "DOCTYPE/ENTITY"),
    ("<annotation><filename>x.png", "not well-formed"),
    ("<root/>", "expected <annotation>"),
    ("<annotation><object><bndbox/></object></annotation>", "missing <filename>"),
    ("<annotation><filename>x.png</filename><object><name>a</name></object></annotation>", "missing <bndbox>"),
    (VOC.format(xmin="abc"), "must be a number"),
    (VOC.format(xmin="20"), "empty box"),
    ("<annotation><filename>x.png</filename></annotation>", "no <object>"),
])
def test_bad_voc_gives_one_line_error(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=problem) as info:
        read_boxes(path)
    assert "\n" not in str(info.value)


def test_voc_coordinates_are_one_based(tmp_path: Path) -> None:
    path = tmp_path / "x.xml"
    path.write_text(VOC.format(xmin="1"))
    assert read_boxes(path) == {"x.png": [GroundTruthBox(0, 0, 10, 10, "cat")]}


# --- plot and command --------------------------------------------------------------------------------------------


def test_curves_png_decodes() -> None:
    png = curves_png({"cam": [1.0, 0.5, 0.2], "x": np.array([0.9, 0.8, 0.1])}, {"cam": [0.1, 0.6, 1.0]})
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] > image.shape[0] > 100
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # something was drawn


@pytest.fixture(scope="session")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 held-out images with their CSV rows, plus one row whose image is missing."""
    folder = tmp_path_factory.mktemp("evalset")
    (folder / "images").mkdir()
    rows = (TEST_SET / "boxes.csv").read_text().splitlines()
    for row in rows[1:13]:
        shutil.copy(TEST_SET / "images" / row.split(",")[0], folder / "images")
    (folder / "boxes.csv").write_text("\n".join(rows[:13]) + "\n")
    (folder / "boxes_missing.csv").write_text("\n".join([*rows[:13], "gone.png,1,1,5,5,star"]) + "\n")
    return folder


def run_cli(*args: str) -> tuple[int, str]:
    """Invoke ``camr`` in-process; returns (exit code, stdout + stderr)."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_evaluate_command_writes_json_and_png(small_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run_cli("evaluate", "-m", str(FIXTURE), "-i", str(small_set / "images"), "--boxes",
                         str(small_set / "boxes.csv"), "-o", str(out), "--method", "cam", "--method", "eigencam",
                         "--steps", "8", "--device", "cpu")
    assert code == 0, text
    report = json.loads((out / "evaluation.json").read_text())
    assert [m["method"] for m in report["methods"]] == ["cam", "eigencam"]
    assert report["settings"]["evaluated"] == 12 and report["failures"] == []
    cam = report["methods"][0]
    assert len(cam["deletion_curve"]) == 9 and 0.0 <= cam["pointing_game"] <= 1.0
    assert cam["accuracy"] is not None and cam["accuracy"] >= 0.9
    image = cv2.imread(str(out / "curves.png"))
    assert image is not None and image.size > 0
    assert not list(out.glob(".camr-*"))  # no temporary files left

    before = (out / "evaluation.json").read_bytes()
    code, text = run_cli("evaluate", "-m", str(FIXTURE), "-i", str(small_set / "images"), "--boxes",
                         str(small_set / "boxes.csv"), "-o", str(out))
    assert code == 2 and "already exists" in text
    assert (out / "evaluation.json").read_bytes() == before


def test_evaluate_reports_missing_images(small_set: Path, tmp_path: Path) -> None:
    code, text = run_cli("evaluate", "-m", str(FIXTURE), "-i", str(small_set / "images"), "--boxes",
                         str(small_set / "boxes_missing.csv"), "-o", str(tmp_path), "--no-faithfulness")
    assert code == 1, text
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert [f["source"] for f in report["failures"]] == ["gone.png"]
    assert report["methods"][0]["deletion_auc"] is None


@pytest.mark.parametrize("args", [
    ("--boxes", "{set}/nope.csv"),
    ("--boxes", "{set}/boxes.csv", "--method", "nomethod"),
    ("--boxes", "{set}/boxes.csv", "--baseline", "zeros"),
])
def test_evaluate_bad_input_is_one_line_error(small_set: Path, tmp_path: Path, args: tuple[str, ...]) -> None:
    code, text = run_cli("evaluate", "-m", str(FIXTURE), "-i", str(small_set / "images"), "-o", str(tmp_path),
                         *(a.format(set=small_set) for a in args))
    assert code == 2
    assert text.strip().startswith("error:") and len(text.strip().splitlines()) == 1
    assert not (tmp_path / "evaluation.json").exists()


def test_unknown_labels_and_escaping_names_are_failures(fixture_engine: CamEngine) -> None:
    name = sorted(read_boxes(TEST_SET / "boxes.csv"))[0]
    annotations = {name: [GroundTruthBox(0, 0, 5, 5, "hexagon")], "../boxes.csv": [GroundTruthBox(0, 0, 5, 5)],
                   "missing.png": [GroundTruthBox(0, 0, 5, 5)]}
    samples, failures = load_samples(fixture_engine, TEST_SET / "images", annotations)
    assert samples == []
    assert {f["source"]: f["error_type"] for f in failures} == {
        name: "UnknownClassError", "../boxes.csv": "UnsafePathError", "missing.png": "ImageNotFoundError"}
    with pytest.raises(InvalidArgumentError, match="none of the 3"):
        from cam_runtime.evaluation import evaluate

        evaluate(fixture_engine, TEST_SET / "images", annotations, ["cam"])
