"""Head abstraction without TensorFlow: per-position formulas reduce to the closed forms on a linear head,
graph-head manifest rules, and CAM refused where it is undefined."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cam_runtime.errors import HeadKindError, ManifestError
from cam_runtime.heads import LinearHead
from cam_runtime.methods import (
    CAM,
    AblationCAM,
    GradCAM,
    GradCAMPlusPlus,
    HeadInputs,
    HiResCAM,
    LayerCAM,
    ReciproCAM,
    XGradCAM,
)
from cam_runtime.model import ModelFolder, read_manifest
from tiny_models import make_tiny_folder

GRADIENT_METHODS = (GradCAM, HiResCAM, XGradCAM, LayerCAM, GradCAMPlusPlus)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def linear() -> tuple[HeadInputs, LinearHead]:
    rng = np.random.default_rng(3)
    features = np.maximum(rng.normal(0.3, 1.0, (2, 4, 5, 12)), 0).astype(np.float32)
    features[0, :, :, 2] = 0.0  # a dead channel: Σ A_k = 0 branches of XGrad-CAM and Grad-CAM++
    weights = rng.normal(0, 1, (12, 7)).astype(np.float32)
    bias = rng.normal(0, 0.5, 7).astype(np.float32)
    head = LinearHead(weights, bias)
    probs = head.forward(features)[1]
    return HeadInputs(features, probs, weights, np.array([[1, 4], [0, 6]]), head=head), head


class _PositionHead(LinearHead):
    """The same linear head, but claiming to be a graph: forces the per-position (gradient graph) code path."""

    linear = False


@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=lambda m: m.name)
@pytest.mark.parametrize("score", ["logit", "probability"])
def test_per_position_formula_reduces_to_closed_form(method: type, score: str,
                                                     linear: tuple[HeadInputs, LinearHead]) -> None:
    inputs, head = linear
    constant = inputs.gradients(score)
    broadcast = inputs.position_gradients(score)
    assert broadcast.shape == (2, 2, 4, 5, 12)
    closed = method.closed_form(inputs.features, constant)
    generic = method.from_gradients(inputs.features, broadcast)
    assert np.abs(closed).max() > 0
    np.testing.assert_allclose(generic, closed, rtol=1e-4, atol=1e-5 * np.abs(closed).max())
    # Through the engine-facing API: a head that only offers gradients gives the same maps.
    graph_like = HeadInputs(inputs.features, inputs.probabilities, None, inputs.classes,
                            head=_PositionHead(head.weights, head.bias))
    assert not graph_like.is_linear
    np.testing.assert_allclose(method(score=score).maps(graph_like), closed, rtol=1e-4,
                               atol=1e-5 * np.abs(closed).max())


def test_cam_refused_without_linear_head(linear: tuple[HeadInputs, LinearHead]) -> None:
    inputs, head = linear
    graph_like = HeadInputs(inputs.features, inputs.probabilities, None, inputs.classes,
                            head=_PositionHead(head.weights, head.bias))
    with pytest.raises(HeadKindError, match="defined only for a GAP → Dense head"):
        CAM().maps(graph_like)


def test_ablation_cam_on_linear_head_matches_definition(linear: tuple[HeadInputs, LinearHead]) -> None:
    inputs, head = linear
    maps = AblationCAM().maps(inputs)
    n = 1
    c = int(inputs.classes[n, 0])
    features = inputs.features[n].astype(np.float64)
    z = features.mean(axis=(0, 1)) @ head.weights + head.bias
    weights = []
    for k in range(features.shape[2]):
        ablated = features.copy()
        ablated[:, :, k] = 0
        weights.append((z[c] - (ablated.mean(axis=(0, 1)) @ head.weights + head.bias)[c]) / z[c])
    expected = np.maximum(features @ np.array(weights), 0)
    # the linear head's ablation drop is W_kc·mean(A_k): check the loop against that too
    np.testing.assert_allclose(np.array(weights) * z[c], head.weights[:, c] * features.mean(axis=(0, 1)), rtol=1e-9)
    np.testing.assert_allclose(maps[n, 0], expected, rtol=1e-4, atol=1e-6)


def test_reciprocam_masks_and_scores(linear: tuple[HeadInputs, LinearHead]) -> None:
    inputs, head = linear
    method = ReciproCAM()
    masks = method.masks(4, 5)
    assert masks.shape == (20, 4, 5) and masks[7, 1, 2] == 1.0 and masks[7, 0, 1] == 0.25 and masks[7, 1, 3] == 0.5
    assert masks[0, 0, 0] == 1.0 and masks[0, 2, 2] == 0.0  # the kernel is clipped at the border
    maps = method.maps(inputs)
    i, j, n, t = 2, 3, 0, 1
    masked = inputs.features[n] * masks[i * 5 + j][..., None]
    expected = _softmax(masked.mean(axis=(0, 1)) @ head.weights + head.bias)[inputs.classes[n, t]]
    raw = np.array([_softmax((inputs.features[n] * m[..., None]).mean(axis=(0, 1)) @ head.weights + head.bias)
                    [inputs.classes[n, t]] for m in masks])
    assert maps[n, t, i, j] == pytest.approx(expected - raw.min(), rel=1e-5)
    assert maps[n, t].min() == 0.0


# --- manifest rules ----------------------------------------------------------------------------------------


def _edit(folder: Path, change) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_old_folders_read_as_linear(tmp_path: Path) -> None:
    folder = make_tiny_folder(tmp_path / "tiny")
    data = json.loads((folder / "manifest.json").read_text())
    assert "head" not in data  # writing a linear folder is byte-for-byte what it was
    loaded = ModelFolder.load(folder)
    assert loaded.is_linear and loaded.manifest.head is None and loaded.weights is not None
    _edit(folder, lambda d: d.update(head={"kind": "linear"}))
    assert ModelFolder.load(folder).is_linear


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(head={"kind": "mystery"}), "head.kind"),
    (lambda d: d.update(head="graph"), "'head' must be an object"),
    (lambda d: d.update(head={"kind": "graph"}), "files.head"),
    (lambda d: d["files"].update(head="head.onnx"), "need a"),
    (lambda d: (d.update(head={"kind": "graph"}), d["files"].update(head="m.onnx", gradient="g.onnx")),
     "files.weights' must be null"),
])
def test_graph_head_manifest_rules(change, message: str, tmp_path: Path) -> None:
    folder = make_tiny_folder(tmp_path / "tiny")
    _edit(folder, change)
    with pytest.raises(ManifestError, match=message):
        read_manifest(folder)
