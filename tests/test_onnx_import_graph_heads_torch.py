"""`camr import` of PyTorch models with non-linear heads (MobileNetV3-, VGG- and MLP-style), against torch autograd.

Gradients of the target score w.r.t. the features from the folder's gradient.onnx (through the runtime's
GraphHead) and the end-to-end Grad-CAM maps from CamEngine are compared with torch autograd on the same model,
for several classes and both scores. Needs the torch-test extra (CPU torch, onnxscript)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch-test extra (PyTorch) is not installed")
pytest.importorskip("onnx", reason="camr import needs onnx")
pytest.importorskip("onnxscript", reason="torch.onnx.export needs onnxscript (torch-test extra)")

from cam_runtime import CamEngine  # noqa: E402
from cam_runtime.heads import GraphHead  # noqa: E402
from cam_runtime.model import read_manifest  # noqa: E402
from export.onnx_import import import_onnx  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

SIZE = 32
K = 7
RTOL = 1e-4
"""Max |ours − torch autograd| relative to the largest |torch| gradient, per class and score."""


def _mobilenetv3_like() -> Any:
    nn = torch.nn
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.Hardswish(),
                             nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(16, 24), nn.Hardswish(),
                         nn.Dropout(0.2), nn.Linear(24, K))
    return backbone, head


def _vgg_like() -> Any:
    nn = torch.nn
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, 1, 1),
                             nn.ReLU(), nn.MaxPool2d(4))
    head = nn.Sequential(nn.Flatten(1), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 32),
                         nn.ReLU(), nn.Dropout(), nn.Linear(32, K))
    return backbone, head


class _Squeeze(torch.nn.Module):
    """mean over (2, 3) → view → Linear → ReLU → sigmoid · 2 + 0.1 → Linear → softmax at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(12, 20)
        self.fc2 = torch.nn.Linear(20, K)

    def forward(self, x: Any) -> Any:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        hidden = torch.relu(self.fc1(pooled.view(pooled.size(0), -1)))  # a Reshape to a shape computed at run time
        return torch.softmax(self.fc2(torch.sigmoid(hidden) * 2.0 + 0.1), dim=1)


def _mlp_softmax() -> Any:
    nn = torch.nn
    backbone = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1), nn.ReLU(), nn.Conv2d(12, 12, 3, 2, 1))
    return backbone, _Squeeze()


def _conv_head() -> Any:
    """Keras' MobileNetV3 head shape: GAP (kept 4-D) → 1×1 Conv → Hardswish → Dropout → 1×1 Conv → Flatten."""
    nn = torch.nn
    backbone = nn.Sequential(nn.Conv2d(3, 10, 3, 2, 1), nn.ReLU(), nn.Conv2d(10, 10, 3, 2, 1))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(10, 16, 1), nn.Hardswish(), nn.Dropout(0.2),
                         nn.Conv2d(16, K, 1), nn.Flatten(1))
    return backbone, head


def _divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class _SqueezeExcite(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _divisible(channels // 4)
        self.fc1, self.fc2 = torch.nn.Conv2d(channels, squeezed, 1), torch.nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: Any) -> Any:
        scale = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return x * torch.nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(scale))))


class _InvertedResidual(torch.nn.Module):
    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hs: bool, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[Any] = []
        if expanded != cin:
            layers += [nn.Conv2d(cin, expanded, 1, bias=False), nn.BatchNorm2d(expanded), act()]
        layers += [nn.Conv2d(expanded, expanded, kernel, stride, kernel // 2, groups=expanded, bias=False),
                   nn.BatchNorm2d(expanded), act()]
        if se:
            layers.append(_SqueezeExcite(expanded))
        layers += [nn.Conv2d(expanded, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Any) -> Any:
        y = self.block(x)
        return x + y if self.residual else y


MOBILENETV3_SMALL = [(16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2),
                     (24, 3, 88, 24, False, False, 1), (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1),
                     (40, 5, 240, 40, True, True, 1), (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1),
                     (48, 5, 288, 96, True, True, 2), (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1)]
"""torchvision's MobileNetV3-Small configuration (in, kernel, expanded, out, SE, hard-swish, stride)."""


def _mobilenetv3_small() -> Any:
    """torchvision's MobileNetV3-Small built by hand (torchvision is not installed): the real 576 → 1024 → 1000
    head (Linear, Hardswish, Dropout, Linear) after 7×7 features at 224 px, random weights."""
    nn = torch.nn
    layers: list[Any] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
    layers += [_InvertedResidual(*config) for config in MOBILENETV3_SMALL]
    layers += [nn.Conv2d(96, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish()]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(576, 1024), nn.Hardswish(),
                         nn.Dropout(0.2), nn.Linear(1024, 1000))
    return nn.Sequential(*layers), head, 224, 1000


MODELS = {"conv_head": _conv_head, "mobilenetv3": _mobilenetv3_like, "vgg": _vgg_like, "mlp_softmax": _mlp_softmax,
          "mobilenetv3_small_224": _mobilenetv3_small}


@pytest.fixture(scope="module", params=sorted(MODELS))
def imported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(3)
    backbone, head, size, k = (*MODELS[request.param](), SIZE, K)[:4]
    model = torch.nn.Sequential(backbone, head).eval()
    with torch.no_grad():  # random BatchNorm statistics, so the head sees varied features
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    tmp = tmp_path_factory.mktemp(request.param)
    src = tmp / "net.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(src), input_names=["input"], dynamo=False,
                      dynamic_axes={"input": {0: "batch"}})
    folder = import_onnx(src, tmp / "model", preset="none")
    return {"name": request.param, "size": size, "k": k, "model": model, "backbone": backbone, "head": head,
            "folder": folder, "engine": CamEngine.load(folder)}


def _images(size: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _torch_gradients(imported: dict[str, Any], x: Any, class_id: int, score: str) -> tuple[Any, Any]:
    features = imported["backbone"](x).detach().requires_grad_(True)
    out = imported["head"](features)
    probs = out if imported["name"] == "mlp_softmax" else torch.softmax(out, dim=1)
    logits = torch.log(out) if imported["name"] == "mlp_softmax" else out  # log-softmax: same softmax gradient
    target = probs[:, class_id] if score == "probability" else logits[:, class_id]
    if imported["name"] == "mlp_softmax" and score == "logit":
        features2 = imported["backbone"](x).detach().requires_grad_(True)
        head = imported["head"]
        pre = head.fc2(torch.sigmoid(torch.relu(head.fc1(features2.mean(dim=(2, 3))))) * 2.0 + 0.1)  # same, as logits
        pre[:, class_id].sum().backward()
        return features2.detach().numpy(), features2.grad.numpy()
    target.sum().backward()
    return features.detach().numpy(), features.grad.numpy()


def test_folder_is_a_graph_head(imported: dict[str, Any]) -> None:
    manifest = read_manifest(imported["folder"])
    if imported["name"] == "mlp_softmax":
        assert any(layer.startswith("Reshape") for layer in manifest.provenance["head_layers"])
    assert manifest.head is not None and manifest.files.weights is None
    parity = manifest.provenance["parity"]["head_graphs"]
    assert max(parity["gradient_fd_max_rel"].values()) <= 1e-3
    assert isinstance(imported["engine"].head, GraphHead)


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_gradients_match_torch_autograd(imported: dict[str, Any], score: str) -> None:
    k = imported["k"]
    x = torch.from_numpy(_images(imported["size"]).astype(np.float32).transpose(0, 3, 1, 2).copy())
    head: GraphHead = imported["engine"].head
    worst = 0.0
    for class_id in (0, 3, k - 1):
        features, expected = _torch_gradients(imported, x, class_id, score)
        nhwc = np.ascontiguousarray(features.transpose(0, 2, 3, 1))
        _logits, probs = head.forward(nhwc)
        onehot = np.zeros((len(x), 1, k), np.float32)
        onehot[:, 0, class_id] = 1
        directions = onehot if score == "logit" else (probs[:, class_id, None, None] * (onehot - probs[:, None]))
        ours = head.logit_gradients(nhwc, directions.astype(np.float32))[:, 0].transpose(0, 3, 1, 2)
        err = float(np.abs(ours - expected).max() / np.abs(expected).max())
        worst = max(worst, err)
        assert np.abs(expected).max() > 0
    print(f"{imported['name']} {score}: max relative error vs torch autograd {worst:.2e}")
    assert worst <= RTOL


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_gradcam_map_matches_torch(imported: dict[str, Any], score: str) -> None:
    images = _images(imported["size"], 2)
    x = torch.from_numpy(images.astype(np.float32).transpose(0, 3, 1, 2).copy())
    for class_id in (1, imported["k"] - 2):
        results = imported["engine"].explain(list(images), method="gradcam", classes=[class_id], score=score)
        for i, result in enumerate(results):
            features, grads = _torch_gradients(imported, x[i:i + 1], class_id, score)
            alpha = grads[0].mean(axis=(1, 2))
            expected = np.maximum((alpha[:, None, None] * features[0]).sum(axis=0), 0)
            ours = np.maximum(result.targets[0].raw, 0)
            assert ours.shape == expected.shape
            scale = max(float(expected.max()), 1e-12)
            ratio = float(ours.max()) / scale if expected.max() > 0 else 1.0
            # the runtime may scale Grad-CAM by a constant (1/(h·w)); the map's shape must be torch's
            np.testing.assert_allclose(ours / max(float(ours.max()), 1e-30), expected / scale, atol=1e-3)
            assert ratio > 0


def test_features_past_a_non_linear_head_fall_back_to_a_graph_head(imported: dict[str, Any], tmp_path: Path) -> None:
    """--features naming the detected tensor gives the same folder kind as the automatic detection."""
    manifest = read_manifest(imported["folder"])
    src = imported["folder"].parent / "net.onnx"
    folder = import_onnx(src, tmp_path / "model", preset="none", features=manifest.provenance["feature_layer"])
    again = read_manifest(folder)
    assert again.head is not None and again.provenance["head_layers"] == manifest.provenance["head_layers"]
