"""cam_runtime.boxes: boxes from a map (threshold at a fraction of the max, 8-connected components), the one
box-threshold check every front end uses, and IoU."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import cam_runtime.boxes as boxes_module
from cam_runtime.boxes import Box, box_iou, boxes_from_map, check_box_threshold
from cam_runtime.errors import InvalidArgumentError


def reference_boxes(heatmap: np.ndarray, threshold: float, all_components: bool) -> list[tuple]:
    """Labelling of the whole thresholded map with cv2 stats, region means by boolean indexing."""
    peak = float(heatmap.max())
    if not peak > 0:
        return []
    mask = (heatmap >= threshold * peak).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable") + 1
    out = []
    for label in order if all_components else order[:1]:
        x, y, w, h, area = (int(v) for v in stats[label])
        region = heatmap[y:y + h, x:x + w][labels[y:y + h, x:x + w] == label]
        out.append((x, y, x + w, y + h, area, float(region.mean() / peak)))
    return out


def random_maps(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        kind = i % 3
        if kind == 0:  # smooth, like an upsampled CAM (touches the borders, has holes)
            yield cv2.resize(rng.normal(size=(int(rng.integers(1, 8)), int(rng.integers(1, 8)))).astype(np.float32),
                             (w, h))
        elif kind == 1:  # isolated pixels: many components with equal areas (tie order matters)
            yield (rng.random((h, w)) < 0.2).astype(np.float32)
        else:
            yield cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2)


@pytest.mark.parametrize("force_contours", [False, True])
def test_boxes_match_full_labelling(monkeypatch, force_contours):
    if force_contours:  # the per-component path even for noise-like maps with hundreds of components
        monkeypatch.setattr(boxes_module, "_MAX_CONTOUR_COMPONENTS", 10**9)
    for heatmap in random_maps(7, 150):
        for threshold in (0.2, 0.6, 1.0):
            for all_components in (False, True):
                got = [(b.x0, b.y0, b.x1, b.y1, b.area, b.score)
                       for b in boxes_from_map(heatmap, threshold, all_components)]
                want = reference_boxes(heatmap, threshold, all_components)
                assert [g[:5] for g in got] == [r[:5] for r in want]
                np.testing.assert_allclose([g[5] for g in got], [r[5] for r in want], rtol=1e-5)


def test_boxes_on_synthetic_maps() -> None:
    heat = np.zeros((100, 200), np.float32)
    heat[10:30, 20:60] = 1.0
    heat[50:90, 100:190] = 0.5
    heat[95, 5] = 0.1  # below 20% of the max: ignored
    (largest,) = boxes_from_map(heat)
    assert (largest.x0, largest.y0, largest.x1, largest.y1) == (100, 50, 190, 90)
    every = boxes_from_map(heat, all_components=True)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in every] == [(100, 50, 190, 90), (20, 10, 60, 30)]
    assert boxes_from_map(heat, threshold=0.6)[0].area == 20 * 40
    assert boxes_from_map(np.zeros((5, 5), np.float32)) == []
    assert largest.iou((100, 50, 190, 90)) == 1.0 and largest.iou((0, 0, 10, 10)) == 0.0
    with pytest.raises(InvalidArgumentError):
        boxes_from_map(heat, threshold=0)


def test_component_with_a_hole_counts_only_its_pixels() -> None:
    heat = np.zeros((20, 20), np.float32)
    heat[2:12, 2:12] = 1.0
    heat[5:9, 5:9] = 0.0  # a hole: inside the box, not part of the component
    heat[15:17, 15:17] = 0.5
    (ring,) = boxes_from_map(heat)
    assert (ring.x0, ring.y0, ring.x1, ring.y1) == (2, 2, 12, 12)
    assert ring.area == 100 - 16 and ring.score == pytest.approx(1.0)
    small = boxes_from_map(heat, all_components=True)[1]
    assert (small.area, small.score) == (4, pytest.approx(0.5))
    assert (small.width, small.height) == (2, 2)


def test_iou_edge_cases() -> None:
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges: x1 is exclusive
    assert box_iou((3, 3, 3, 3), (3, 3, 3, 3)) == 0.0  # empty union
    box = Box(0, 0, 4, 4, 16, 1.0)
    assert box.iou(Box(2, 2, 6, 6, 16, 1.0)) == pytest.approx(4 / 28)
    assert box.to_dict() == {"x0": 0, "y0": 0, "x1": 4, "y1": 4, "area": 16, "score": 1.0}


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan")])
def test_box_threshold_out_of_range_is_refused_everywhere(value: float) -> None:
    """One check, the same range, for the library, the explain job, video runs and the server."""
    from cam_runtime.cli.video_cmd import VideoOptions
    from cam_runtime.jobs.explain_folder import ExplainOptions
    from cam_runtime.serve.batcher import ExplainParams

    with pytest.raises(InvalidArgumentError, match=r"box threshold must be in \(0, 1\]"):
        check_box_threshold(value)
    with pytest.raises(InvalidArgumentError, match=r"box threshold must be in \(0, 1\]"):
        boxes_from_map(np.ones((4, 4), np.float32), threshold=value)
    with pytest.raises(InvalidArgumentError, match=r"--box-threshold must be in \(0, 1\]"):
        ExplainOptions(box_threshold=value).validate()
    with pytest.raises(InvalidArgumentError, match=r"--box-threshold must be in \(0, 1\]"):
        VideoOptions(box_threshold=value).validate()
    with pytest.raises(InvalidArgumentError, match=r"box_threshold must be in \(0, 1\]"):
        ExplainParams(box_threshold=value).validate(engine=None)  # type: ignore[arg-type]


def test_box_threshold_bounds_are_accepted() -> None:
    check_box_threshold(1.0)
    check_box_threshold(1e-6)
    assert len(boxes_from_map(np.ones((3, 3), np.float32), threshold=1.0)) == 1
