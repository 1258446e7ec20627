"""Device maps (TopK → Gather → MatMul appended to the graph) agree with the NumPy reference path."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cam_runtime import CamEngine, ModelFolder
from cam_runtime.device_maps import extend_model
from cam_runtime.errors import DeviceMapsError, InvalidArgumentError, OnnxMissingError
from cam_runtime.methods import CAM, HeadInputs
from cam_runtime.providers import CUDA, available_providers

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "models" / "fixtures" / "shapes"
SHAPES_IMAGES = ROOT / "models" / "fixtures" / "shapes-test" / "images"
HAS_CUDA = CUDA in available_providers()
cuda = [pytest.mark.cuda,
        pytest.mark.skipif(not HAS_CUDA, reason="CUDAExecutionProvider unavailable (install onnxruntime-gpu on a "
                                                "machine with a GPU)")]
DEVICE_METHODS = ("cam", "gradcam", "hirescam")
MAP_RTOL = 1e-5


def map_atol(reference: np.ndarray) -> float:
    """float32 sums over C in another order: absolute slack only near zero, relative to the map's range."""
    return 1e-6 * float(np.abs(reference).max() or 1.0)


def assert_same_boxes(boxes: list, reference: list) -> None:
    """Same pixel boxes; box scores (map means) equal up to float32 summation order."""
    assert [(b.x0, b.y0, b.x1, b.y1, b.area) for b in boxes] == [(b.x0, b.y0, b.x1, b.y1, b.area) for b in reference]
    assert [b.score for b in boxes] == pytest.approx([b.score for b in reference], rel=1e-5, abs=1e-6)


@pytest.fixture(scope="session")
def folders(tiny_nhwc: Path, tiny_nchw: Path) -> dict[str, Path]:
    """The three model folders every agreement test runs on."""
    return {"nhwc": tiny_nhwc, "nchw": tiny_nchw, "shapes": SHAPES}


@pytest.fixture(scope="session")
def engines(folders: dict[str, Path]) -> dict[str, tuple[CamEngine, CamEngine]]:
    """(NumPy reference engine, device-map engine) per folder, on the CPU."""
    return {name: (CamEngine.load(path, device="cpu", threads=1),
                   CamEngine.load(path, device="cpu", threads=1, device_maps=True))
            for name, path in folders.items()}


@pytest.fixture(scope="session")
def images(photo_arrays: dict[str, np.ndarray]) -> dict[str, list]:
    """Five images per folder: real photos for the tiny models, the fixture's own test shapes for shapes."""
    photos = list(photo_arrays.values())
    shapes = sorted(SHAPES_IMAGES.glob("*.png"))[:5]
    return {"nhwc": [*photos, photos[0][::2, ::3], photos[1][50:300, 40:500]],
            "nchw": [*photos, photos[2][::-1], photos[0][:200]], "shapes": shapes}


def random_batch(engine: CamEngine, n: int, seed: int) -> np.ndarray:
    """A preprocessed-looking batch in the engine's input layout."""
    return np.random.default_rng(seed).normal(size=(n, *engine._input_shape())).astype(np.float32)


@pytest.mark.parametrize("name", ["nhwc", "nchw", "shapes"])
@pytest.mark.parametrize("top_k", [1, 3, 5])
def test_run_device_maps_matches_numpy_cam(engines: dict, name: str, top_k: int) -> None:
    reference, device = engines[name]
    batch = random_batch(reference, 6, seed=top_k)
    probs, features = reference.run(batch)
    targets = reference.resolve_targets(probs, None, top_k)
    expected = CAM().maps(HeadInputs(features, probs, reference.folder.weights, targets))
    result = device.run_device_maps(batch, top_k)
    assert result.maps.shape == expected.shape == (6, top_k, *features.shape[1:3])
    np.testing.assert_array_equal(result.classes, targets)
    np.testing.assert_allclose(result.probabilities, probs, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.maps, expected, rtol=MAP_RTOL, atol=map_atol(expected))


@pytest.mark.parametrize("name", ["nhwc", "nchw", "shapes"])
@pytest.mark.parametrize("method", DEVICE_METHODS)
@pytest.mark.parametrize("top_k", [1, 2])
def test_explain_agrees_and_never_fetches_features(engines: dict, images: dict, name: str, method: str,
                                                   top_k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    reference, device = engines[name]
    expected = reference.explain(images[name], method=method, top_k=top_k, batch_size=3)

    def no_features(batch: np.ndarray) -> None:
        raise AssertionError("the device-map path fetched the features")

    monkeypatch.setattr(device, "run", no_features)
    got = device.explain(images[name], method=method, top_k=top_k, batch_size=3)
    assert len(got) == len(expected) == len(images[name])
    for mine, ref in zip(got, expected, strict=True):
        assert mine.method == ref.method
        assert [p.class_id for p in mine.top_k] == [p.class_id for p in ref.top_k]
        assert [t.class_id for t in mine.targets] == [t.class_id for t in ref.targets]
        for target, ref_target in zip(mine.targets, ref.targets, strict=True):
            np.testing.assert_allclose(target.raw, ref_target.raw, rtol=MAP_RTOL, atol=map_atol(ref_target.raw))
            assert target.probability == pytest.approx(ref_target.probability, rel=1e-6, abs=1e-7)
            assert_same_boxes(target.boxes, ref_target.boxes)


def test_iter_explain_with_prefetch_uses_device_maps(engines: dict, images: dict,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    reference, device = engines["shapes"]
    calls: list[int] = []
    original = device.run_device_maps
    monkeypatch.setattr(device, "run_device_maps", lambda batch, k: calls.append(len(batch)) or original(batch, k))
    got = list(device.iter_explain(images["shapes"], top_k=2, batch_size=2))
    expected = reference.explain(images["shapes"], top_k=2, batch_size=2)
    assert calls == [2, 2, 1]
    for mine, ref in zip(got, expected, strict=True):
        np.testing.assert_allclose(mine.targets[1].raw, ref.targets[1].raw, rtol=MAP_RTOL,
                                   atol=map_atol(ref.targets[1].raw))


@pytest.mark.parametrize(("method", "options", "classes"), [
    ("cam", {}, [1, 3]),  # given classes
    ("gradcam", {"score": "probability"}, None),  # not a transform of CAM
    ("layercam", {}, None),
    ("gradcam++", {}, None),
    ("eigencam", {}, None),
])
def test_other_cases_use_the_numpy_path(engines: dict, images: dict, method: str, options: dict, classes: list | None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    reference, device = engines["nhwc"]
    monkeypatch.setattr(device, "run_device_maps", lambda *a: pytest.fail("device maps used for a NumPy-only case"))
    got = device.explain(images["nhwc"][:3], method=method, classes=classes, top_k=2, **options)
    expected = reference.explain(images["nhwc"][:3], method=method, classes=classes, top_k=2, **options)
    for mine, ref in zip(got, expected, strict=True):
        for target, ref_target in zip(mine.targets, ref.targets, strict=True):
            assert target.class_id == ref_target.class_id
            np.testing.assert_array_equal(target.raw, ref_target.raw)


def test_predict_probabilities_and_run_unchanged_by_extension(engines: dict) -> None:
    reference, device = engines["nchw"]
    batch = random_batch(reference, 4, seed=9)
    np.testing.assert_array_equal(device.predict_probabilities(batch), reference.predict_probabilities(batch))
    for mine, ref in zip(device.run(batch), reference.run(batch), strict=True):
        np.testing.assert_array_equal(mine, ref)


def test_model_folder_files_untouched(folders: dict[str, Path], engines: dict) -> None:
    for path in folders.values():
        ModelFolder.load(path, verify_checksums=True)  # raises ChecksumMismatchError if a file changed
    assert engines["shapes"][1].device_maps and not engines["shapes"][0].device_maps


def test_auto_is_off_on_cpu(tiny_nhwc: Path) -> None:
    engine = CamEngine.load(tiny_nhwc, device="cpu", device_maps="auto", io_binding="auto", warmup=False)
    assert not engine.device_maps and not engine.io_binding
    with pytest.raises(InvalidArgumentError, match="loaded without device_maps"):
        engine.run_device_maps(random_batch(engine, 1, 0))


def test_bad_arguments(engines: dict, tiny_nhwc: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="device_maps must be True, False or 'auto'"):
        CamEngine.load(tiny_nhwc, device="cpu", device_maps="yes")  # type: ignore[arg-type]
    device = engines["nhwc"][1]
    with pytest.raises(InvalidArgumentError, match=r"top_k must be in \[1, 5\]"):
        device.run_device_maps(random_batch(device, 1, 0), 6)


def test_missing_onnx_is_one_clear_error(tiny_nhwc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    # The folder's graphs are checked with onnx before anything else (a core dependency since then).
    with pytest.raises(OnnxMissingError, match="needs the onnx package: pip install onnx") as info:
        CamEngine.load(tiny_nhwc, device="cpu", device_maps=True)
    assert isinstance(info.value, ImportError)
    assert "\n" not in str(info.value)


def test_name_clash_is_refused(tmp_path: Path, engines: dict) -> None:
    import onnx
    from onnx import helper

    folder = engines["nhwc"][0].folder
    model = onnx.load(str(folder.model_path))
    model.graph.node.append(helper.make_node("Identity", ["probabilities"], ["cam_maps"]))
    model.graph.output.append(helper.make_tensor_value_info("cam_maps", onnx.TensorProto.FLOAT, None))
    path = tmp_path / "clash.onnx"
    onnx.save(model, str(path))
    with pytest.raises(DeviceMapsError, match=r"already has tensors named \['cam_maps'\]"):
        extend_model(path, folder.manifest, folder.weights)
    with pytest.raises(DeviceMapsError, match="cannot read"):
        extend_model(tmp_path / "missing.onnx", folder.manifest, folder.weights)


@pytest.mark.parametrize("name", ["nhwc", "nchw", "shapes"])
def test_static_feature_size_needs_no_shape_nodes(engines: dict, name: str) -> None:
    """A constant map shape: no Shape/Slice/Concat, which onnxruntime would run on the CPU beside a CUDA graph."""
    import onnx

    folder = engines[name][0].folder
    extended = onnx.load_from_string(extend_model(folder.model_path, folder.manifest, folder.weights))
    added = [n.op_type for n in extended.graph.node if any(o.startswith("cam_") for o in n.output)]
    assert "Shape" not in added and "Concat" not in added and "TopK" in added


def test_features_declared_without_dims_get_inferred_sizes(tmp_path: Path, engines: dict) -> None:
    """camr import declares the features output without dims: shape inference still gives the constant shape."""
    import onnx

    folder = engines["nchw"][0].folder
    model = onnx.load(str(folder.model_path))
    features = next(o for o in model.graph.output if o.name == folder.manifest.outputs.features)
    for dim in features.type.tensor_type.shape.dim:
        dim.Clear()
    path = tmp_path / "no-dims.onnx"
    onnx.save(model, str(path))
    extended = onnx.load_from_string(extend_model(path, folder.manifest, folder.weights))
    assert "Shape" not in [n.op_type for n in extended.graph.node]


@pytest.mark.parametrize("name", ["nhwc", "nchw"])
def test_symbolic_feature_size_still_extends(tmp_path: Path, engines: dict, name: str) -> None:
    """A model of any input size (h and w symbolic from the input on): the map shape is read at run time."""
    import onnx
    import onnxruntime as ort

    reference = engines[name][0]
    folder = reference.folder
    model = onnx.load(str(folder.model_path))
    features = next(o for o in model.graph.output if o.name == folder.manifest.outputs.features)
    spatial = (2, 3) if folder.manifest.outputs.features_layout == "NCHW" else (1, 2)
    input_spatial = (2, 3) if folder.manifest.input.layout == "NCHW" else (1, 2)
    for axis, in_axis, symbol in zip(spatial, input_spatial, ("h", "w"), strict=True):
        features.type.tensor_type.shape.dim[axis].dim_param = symbol
        model.graph.input[0].type.tensor_type.shape.dim[in_axis].dim_param = "in_" + symbol
    path = tmp_path / "symbolic.onnx"
    onnx.save(model, str(path))
    extended = extend_model(path, folder.manifest, folder.weights)
    assert "Shape" in [n.op_type for n in onnx.load_from_string(extended).graph.node]
    session = ort.InferenceSession(extended, providers=["CPUExecutionProvider"])
    batch = random_batch(reference, 3, seed=5)
    maps, classes = session.run(["cam_maps", "cam_classes"], {folder.manifest.input.name: batch,
                                                             "cam_top_k": np.array([2], np.int64)})
    probs, feats = reference.run(batch)
    expected = CAM().maps(HeadInputs(feats, probs, folder.weights, classes))
    np.testing.assert_allclose(maps, expected, rtol=MAP_RTOL, atol=map_atol(expected))


@pytest.mark.parametrize("name", ["nhwc", "nchw", "shapes"])
@pytest.mark.parametrize("io_binding", [False, True])
@cuda[0]
@cuda[1]
def test_cuda_device_maps_match_cpu_reference(folders: dict[str, Path], engines: dict, name: str,
                                              io_binding: bool) -> None:
    reference = engines[name][0]
    gpu = CamEngine.load(folders[name], device="cuda", device_maps=True, io_binding=io_binding)
    assert gpu.providers[0] == CUDA
    batch = random_batch(reference, 8, seed=3)
    probs, features = reference.run(batch)
    targets = reference.resolve_targets(probs, None, 2)
    result = gpu.run_device_maps(batch, 2)
    np.testing.assert_allclose(result.probabilities, probs, atol=1e-4)
    # Near-tied classes may swap between devices: the GPU's top-2 must be a valid top-2 of the CPU's probabilities
    # (within float noise), and its maps must be the CPU's CAMs of the classes it chose.
    chosen = np.take_along_axis(probs, result.classes, axis=1)
    np.testing.assert_allclose(chosen, np.take_along_axis(probs, targets, axis=1), atol=1e-4)
    expected = CAM().maps(HeadInputs(features, probs, reference.folder.weights, result.classes))
    correlation = np.corrcoef(result.maps.ravel(), expected.ravel())[0, 1]
    assert correlation >= 0.999
    np.testing.assert_allclose(result.maps, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))
