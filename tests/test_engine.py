"""Engine: loading and verification, providers, layouts, inputs, targets, outputs; without TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from cam_runtime import CamEngine, boxes_from_map
from cam_runtime.errors import (
    ChecksumMismatchError,
    GraphMismatchError,
    InvalidArgumentError,
    ManifestError,
    ProviderNotAvailableError,
    UnknownClassError,
    UnsupportedFormatError,
)
from cam_runtime.maps import heatmap_at, normalize
from cam_runtime.providers import ProviderFallbackWarning, resolve_providers, warn_on_fallback
from cam_runtime.render import overlay_bgr


def _copy(folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / folder.name
    shutil.copytree(folder, dest)
    return dest


# --- loading and verification -------------------------------------------------------------------------


def test_load_reports_model_facts(tiny_nhwc: Path) -> None:
    engine = CamEngine.load(tiny_nhwc, device="cpu")
    assert engine.num_classes == 5 and engine.labels[0] == "circle"
    assert engine.providers == ["CPUExecutionProvider"]


def test_tampered_file_is_refused(tiny_nhwc: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_nhwc, tmp_path)
    weights = np.load(folder / "dense_weights.npy")
    weights[0, 0] += 1.0
    np.save(folder / "dense_weights.npy", weights)
    with pytest.raises(ChecksumMismatchError, match=r"dense_weights\.npy"):
        CamEngine.load(folder, device="cpu")


def test_unknown_format_version_is_refused(tiny_nhwc: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_nhwc, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 2
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedFormatError, match="v2"):
        CamEngine.load(folder, device="cpu")


def test_manifest_that_lies_about_the_graph_is_refused(tiny_nhwc: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_nhwc, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["outputs"]["features"] = "conv_out"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GraphMismatchError, match="conv_out"):
        CamEngine.load(folder, device="cpu")
    manifest["outputs"]["features"] = "features"
    manifest["input"]["layout"] = "NCHW"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GraphMismatchError, match="manifest implies"):
        CamEngine.load(folder, device="cpu")


def test_missing_key_is_a_manifest_error(tiny_nhwc: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_nhwc, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["preprocess"]["std"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"preprocess\.std"):
        CamEngine.load(folder, device="cpu")


# --- providers -------------------------------------------------------------------------------------------


def test_explicit_cuda_without_cuda_lists_available(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderNotAvailableError, match="available providers: CPUExecutionProvider"):
        resolve_providers("cuda")
    assert resolve_providers("auto") == ["CPUExecutionProvider"]


def test_auto_prefers_cuda_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    providers = resolve_providers("auto", {"cudnn_conv_algo_search": "HEURISTIC"})
    assert providers[0] == ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})
    with pytest.raises(InvalidArgumentError):
        resolve_providers("tpu")


def test_fallback_is_warned() -> None:
    with pytest.warns(ProviderFallbackWarning, match="CUDAExecutionProvider to CPUExecutionProvider"):
        warn_on_fallback([("CUDAExecutionProvider", {}), "CPUExecutionProvider"], ["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_on_fallback(["CPUExecutionProvider"], ["CPUExecutionProvider"])


# --- layouts and inputs ----------------------------------------------------------------------------------


def test_nchw_and_nhwc_folders_give_the_same_maps(tiny_nhwc: Path, tiny_nchw: Path, photo_files: dict) -> None:
    a = CamEngine.load(tiny_nhwc, device="cpu").explain(photo_files["chelsea.jpg"], method="gradcam++", top_k=2)[0]
    b = CamEngine.load(tiny_nchw, device="cpu").explain(photo_files["chelsea.jpg"], method="gradcam++", top_k=2)[0]
    assert [p.class_id for p in a.top_k] == [p.class_id for p in b.top_k]
    for ta, tb in zip(a.targets, b.targets, strict=True):
        np.testing.assert_allclose(ta.raw, tb.raw, rtol=1e-5, atol=1e-6)


def test_path_bytes_and_arrays_agree(tiny_nhwc: Path, photo_files: dict, photo_arrays: dict) -> None:
    engine = CamEngine.load(tiny_nhwc, device="cpu")
    path = photo_files["coffee.png"]
    rgb = photo_arrays["coffee"]
    results = engine.explain([path, path.read_bytes(), str(path), rgb])
    results.append(engine.explain(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), array_order="BGR")[0])
    results.append(engine.explain(rgb.astype(np.float32) / 255.0)[0])
    for other in results[1:]:
        np.testing.assert_allclose(other.targets[0].raw, results[0].targets[0].raw, rtol=1e-5, atol=1e-6)
    assert results[0].source == str(path) and results[1].source == "<bytes #1>"


def test_preprocessing_layout_and_values(tiny_nchw: Path) -> None:
    engine = CamEngine.load(tiny_nchw, device="cpu", warmup=False)
    bgr = np.zeros((32, 32, 3), np.uint8)
    bgr[:, :, 2] = 255  # red in BGR
    x = engine.preprocessor.tensor(bgr)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [(255 - 123.675) / 58.395, -116.28 / 57.12, -103.53 / 57.375], rtol=1e-6)


def test_grayscale_and_16bit_inputs(tiny_nhwc: Path, tmp_path: Path) -> None:
    engine = CamEngine.load(tiny_nhwc, device="cpu")
    gray = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "deep.png"), (gray.astype(np.uint16) * 257))
    a, b = engine.explain([tmp_path / "gray.png", tmp_path / "deep.png"])
    assert a.image.bgr.shape == (48, 64, 3) and np.array_equal(a.image.bgr, b.image.bgr)


# --- targets -----------------------------------------------------------------------------------------------


def test_targets_topk_ids_labels_and_per_image(tiny_nhwc: Path, photo_arrays: dict) -> None:
    engine = CamEngine.load(tiny_nhwc, device="cpu")
    images = [photo_arrays["chelsea"], photo_arrays["astronaut"]]
    top = engine.explain(images, top_k=3)
    assert all([t.class_id for t in r.targets] == [p.class_id for p in r.top_k] for r in top)
    assert all(r.top_k[0].probability >= r.top_k[1].probability >= r.top_k[2].probability for r in top)
    named = engine.explain(images, classes=["square", 4])
    assert [[t.class_id for t in r.targets] for r in named] == [[1, 4], [1, 4]]
    per_image = engine.explain(images, classes=[["triangle"], [0]])
    assert [r.targets[0].label for r in per_image] == ["triangle", "circle"]
    assert engine.explain(images[0], classes="2")[0].targets[0].class_id == 2
    with pytest.raises(UnknownClassError, match="no such label"):
        engine.explain(images, classes="dog")
    with pytest.raises(UnknownClassError, match="id must be in"):
        engine.explain(images, classes=5)
    with pytest.raises(InvalidArgumentError, match="2 images"):
        engine.explain(images, classes=[[0]])
    with pytest.raises(InvalidArgumentError, match="top_k"):
        engine.explain(images, top_k=0)


def test_ambiguous_label_requires_id(tmp_path: Path) -> None:
    from tiny_models import make_tiny_folder

    folder = make_tiny_folder(tmp_path / "dup", labels=["crane", "crane", "a", "b", "c"])
    engine = CamEngine.load(folder, device="cpu", warmup=False)
    with pytest.raises(UnknownClassError, match=r"ambiguous \(ids \[0, 1\]\)"):
        engine.class_id("crane")


# --- maps, boxes, overlays ------------------------------------------------------------------------------


def test_heatmap_is_upsampled_to_original_size_and_normalised() -> None:
    raw = np.array([[-2.0, 0.0], [1.0, 4.0]], np.float32)
    heat = heatmap_at(raw, 30, 50)
    assert heat.shape == (30, 50) and heat.dtype == np.float32
    assert heat.max() == pytest.approx(1.0, abs=1e-6) and heat.min() == 0.0
    assert heat[-1, -1] == pytest.approx(1.0) and heat[0, 0] == 0.0
    assert not normalize(np.full((3, 3), -1.0, np.float32)).any()


def test_overlay_layout_and_channel_order(tiny_nhwc: Path, photo_arrays: dict) -> None:
    result = CamEngine.load(tiny_nhwc, device="cpu").explain(photo_arrays["chelsea"])[0]
    rgb = result.overlay(heatmap_weight=0.4, draw_boxes=False)
    bgr = result.overlay(heatmap_weight=0.4, draw_boxes=False, channel_order="BGR")
    assert rgb.shape == (300, 451, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, bgr[:, :, ::-1])
    np.testing.assert_array_equal(result.overlay(heatmap_weight=0.0, draw_boxes=False), photo_arrays["chelsea"])
    assert result.colored_heatmap().shape == (300, 451, 3)
    with pytest.raises(InvalidArgumentError):
        result.overlay(colormap="rainbowish")


def test_overlay_draws_boxes() -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    heat = np.zeros((40, 40), np.float32)
    heat[10:20, 10:20] = 1.0
    out = overlay_bgr(image, heat, alpha=0.0, boxes=boxes_from_map(heat))
    assert tuple(out[10, 10]) == (0, 255, 0) and tuple(out[19, 19]) == (0, 255, 0) and not out[15, 15].any()


def test_result_is_json_serialisable_with_stage_timings(tiny_nhwc: Path, photo_files: dict) -> None:
    result = CamEngine.load(tiny_nhwc, device="cpu").explain(photo_files["astronaut.png"], top_k=2)[0]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["width"] == 512 and data["method"] == "cam" and len(data["top_k"]) == 2
    assert set(data["timings_ms"]) == {"decode", "preprocess", "inference", "maps"}
    box = data["targets"][0]["boxes"][0]
    assert 0 <= box["x0"] < box["x1"] <= 512 and 0 <= box["y0"] < box["y1"] <= 512


def test_iter_explain_streams_and_reports_failures(tiny_nhwc: Path, photo_files: dict, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    inputs = [photo_files["chelsea.jpg"], tmp_path / "broken.jpg", tmp_path / "missing.png",
              photo_files["coffee.jpg"]] * 3
    engine = CamEngine.load(tiny_nhwc, device="cpu")
    items = list(engine.iter_explain(inputs, batch_size=5))
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["ExplainResult", "ImageFailure", "ImageFailure", "ExplainResult"] * 3
    assert "cannot decode image" in items[1].error and "image not found" in items[2].error
    assert [i.source for i in items] == [str(p) for p in inputs]


def test_runtime_never_imports_tensorflow(tiny_nhwc: Path, photo_files: dict) -> None:
    code = (
        "import sys, cam_runtime, cam_runtime.cli; from cam_runtime import CamEngine;"
        f"CamEngine.load({str(tiny_nhwc)!r}, device='cpu').explain({str(photo_files['chelsea.jpg'])!r});"
        "\nfor argv in (['camr', '--help'], ['camr', 'serve', '--help']):\n"
        "    sys.argv = argv\n"
        "    try:\n        cam_runtime.cli.main()\n    except SystemExit:\n        pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'tf_keras',"
        " 'fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'multipart', 'python_multipart', 'httpx'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--max-batch" in proc.stdout  # serve --help ran


def test_handmade_nchw_folder_explains_jpeg_and_png(tiny_nchw: Path, photo_files: dict) -> None:
    engine = CamEngine.load(tiny_nchw, device="cpu")
    results = engine.explain([photo_files["astronaut.jpg"], photo_files["astronaut.png"]], method="scorecam")
    assert [r.heatmap.shape for r in results] == [(512, 512), (512, 512)]
    # JPEG loses a little; the explanation must not change much.
    assert np.corrcoef(results[0].heatmap.ravel(), results[1].heatmap.ravel())[0, 1] > 0.95


def test_exif_orientation_is_applied(tmp_path: Path, photo_arrays: dict) -> None:
    from PIL import Image

    from cam_runtime.imaging import load_image

    rgb = photo_arrays["chelsea"]  # 300x451
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    Image.fromarray(rgb).save(tmp_path / "plain.jpg", quality=95)
    rotated = load_image(tmp_path / "rotated.jpg").bgr
    plain = load_image(tmp_path / "plain.jpg").bgr
    assert rotated.shape == (451, 300, 3) and plain.shape == (300, 451, 3)
    np.testing.assert_array_equal(rotated, cv2.rotate(plain, cv2.ROTATE_90_CLOCKWISE))


def test_folder_stream_pulls_inputs_lazily(tiny_nhwc: Path, photo_arrays: dict, tmp_path: Path) -> None:
    from cam_runtime import iter_image_files

    for i in range(40):
        sub = tmp_path / f"d{i % 3}"
        sub.mkdir(exist_ok=True)
        cv2.imwrite(str(sub / f"{i:03d}.png"), photo_arrays["coffee"][::8, ::8])
    (tmp_path / "notes.txt").write_text("not an image")
    pulled = 0

    def counting():
        nonlocal pulled
        for path in iter_image_files(tmp_path):
            pulled += 1
            yield path

    stream = CamEngine.load(tiny_nhwc, device="cpu").iter_explain(counting(), batch_size=4)
    first = next(stream)
    assert first.source.endswith("000.png")
    assert pulled <= 12, f"{pulled} inputs pulled before the first result: the stream is not lazy"
    assert 1 + sum(1 for _ in stream) == 40 and pulled == 40
    assert [p.name for p in iter_image_files(tmp_path, recursive=False)] == []
