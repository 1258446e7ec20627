"""Export test-suite (needs the export extra): parity, format, head detection, Keras preprocessing and autograd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paper_maps import maps_from_gradients

tf = pytest.importorskip("tensorflow", reason="the export extra (tensorflow, tf2onnx) is not installed")
keras = pytest.importorskip("keras")

from cam_runtime import CamEngine  # noqa: E402
from cam_runtime.errors import OutputExistsError  # noqa: E402
from cam_runtime.imaging import load_image  # noqa: E402
from cam_runtime.model import InputSpec, ModelFolder, read_manifest, sha256_file  # noqa: E402  # noqa: E402
from cam_runtime.preprocess import Preprocessor  # noqa: E402
from export.architectures import ARCHITECTURES  # noqa: E402
from export.errors import (  # noqa: E402
    KerasModelLoadError,
    KerasModelNotFoundError,
    LabelsError,
    UnsupportedHeadError,
    WeightsFileError,
    WeightsUnavailableError,
)
from export.exporter import _build_application, export_model  # noqa: E402
from export.heads import find_cam_head  # noqa: E402

pytestmark = pytest.mark.tensorflow


@pytest.fixture(scope="session")
def resnet_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet50 with seeded random weights, exported once per session."""
    folder = tmp_path_factory.mktemp("export") / "resnet50-random"
    export_model(folder, arch="resnet50", weights="random")
    return folder


@pytest.fixture(scope="session")
def resnet_keras() -> object:
    """The same seeded ResNet50 as the export (rebuilding with the same seed gives the same weights)."""
    model, _ = _build_application(ARCHITECTURES["resnet50"], "random", None)
    return model


# --- format and parity --------------------------------------------------------------------------------


def test_resnet_export_follows_format_with_parity(resnet_folder: Path) -> None:
    manifest = read_manifest(resnet_folder)
    data = json.loads((resnet_folder / "manifest.json").read_text())
    assert data["format"] == "cam-model" and data["format_version"] == 1
    assert manifest.input.layout == "NHWC" and (manifest.input.height, manifest.input.width) == (224, 224)
    assert manifest.preprocess.color_order == "BGR" and manifest.preprocess.resize == "nearest"
    assert manifest.num_classes == 1000 and manifest.provenance["feature_shape"] == [7, 7, 2048]
    assert manifest.provenance["weights"].startswith("random")
    parity = manifest.provenance["parity"]
    assert parity["probabilities_max_abs"] <= 1e-4
    assert parity["features_max_rel"] <= 2e-3
    assert parity["head_reconstruction_max_abs"] <= 1e-4
    for name, digest in manifest.sha256.items():
        assert sha256_file(resnet_folder / name) == digest
    assert np.load(resnet_folder / "dense_weights.npy").shape == (2048, 1000)
    assert np.load(resnet_folder / "dense_weights.npy").dtype == np.float32
    assert np.load(resnet_folder / "dense_bias.npy").shape == (1000,)
    labels = (resnet_folder / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench" and labels[281] == "tabby"
    assert not list(resnet_folder.parent.glob(".*tmp*")), "temporary export folder left behind"


def test_onnx_has_dynamic_batch_and_named_outputs(resnet_folder: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(resnet_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert inp.name == "image" and not isinstance(inp.shape[0], int)
    assert outputs["probabilities"][1] == 1000 and outputs["features"][1:] == [7, 7, 2048]
    for batch in (1, 3):
        probs, feats = session.run(["probabilities", "features"], {"image": np.zeros((batch, 224, 224, 3), np.float32)})
        assert probs.shape == (batch, 1000) and feats.shape == (batch, 7, 7, 2048)


def test_exported_weights_match_keras(resnet_folder: Path, resnet_keras: object) -> None:
    head = find_cam_head(resnet_keras)
    np.testing.assert_array_equal(np.load(resnet_folder / "dense_weights.npy"), head.dense.kernel.numpy())


def test_runtime_explains_jpeg_and_png(resnet_folder: Path, photo_files: dict[str, Path]) -> None:
    engine = CamEngine.load(resnet_folder, device="cpu")
    results = engine.explain([photo_files["chelsea.jpg"], photo_files["coffee.png"]], method="cam", top_k=3)
    assert [r.heatmap.shape for r in results] == [(300, 451), (400, 600)]
    assert all(len(r.top_k) == 3 and r.boxes for r in results)


def test_refuses_existing_output_unless_forced(resnet_folder: Path) -> None:
    before = (resnet_folder / "manifest.json").read_bytes()
    with pytest.raises(OutputExistsError):
        export_model(resnet_folder, arch="resnet50", weights="random")
    assert (resnet_folder / "manifest.json").read_bytes() == before


def test_imagenet_download_path_is_reached_and_failure_is_clear(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    from keras.src.utils import file_utils

    requested: list[str] = []

    def offline_get_file(fname: str | None = None, origin: str | None = None, **_: object) -> str:
        requested.append(f"{fname} {origin}")
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno 101] Network is unreachable")

    monkeypatch.setattr(file_utils, "get_file", offline_get_file)
    with pytest.raises(WeightsUnavailableError, match="--weights random"):
        export_model(tmp_path / "out", arch="resnet50", weights="imagenet")
    assert requested and "resnet50_weights_tf_dim_ordering_tf_kernels.h5" in requested[0]
    assert not (tmp_path / "out").exists()


# --- head detection ------------------------------------------------------------------------------------

HEADS = {  # arch → (input size, feature shape at that size)
    "resnet50v2": (64, (2, 2, 2048)),
    "mobilenetv2": (96, (3, 3, 1280)),
    "densenet121": (64, (2, 2, 1024)),
    "efficientnetb0": (64, (2, 2, 1280)),
    "xception": (96, (3, 3, 2048)),
    "inceptionv3": (96, (1, 1, 2048)),
}


@pytest.mark.parametrize("arch", sorted(HEADS))
def test_head_detection_across_applications(arch: str) -> None:
    size, feature_shape = HEADS[arch]
    model = ARCHITECTURES[arch].build(None, size)
    head = find_cam_head(model)
    assert head.feature_shape == feature_shape
    assert type(head.pooling).__name__ == "GlobalAveragePooling2D"
    assert head.dense.kernel.shape == (feature_shape[2], 1000)


@pytest.mark.parametrize(("arch", "phrase"), [
    ("vgg16", "Dense classifier follows another Dense"),
    ("convnexttiny", "LayerNormalization"),
    ("mobilenetv3small", "non-linear activation sits between pooling"),
])
def test_refuses_non_gap_heads(arch: str, phrase: str, tmp_path: Path) -> None:
    # head_kind="linear" keeps the old contract; the default exports them with head graphs (test_graph_heads.py)
    with pytest.raises(UnsupportedHeadError, match=phrase) as info:
        export_model(tmp_path / arch, arch=arch, weights="random", input_size=32, head_kind="linear")
    assert "CAM is exact only when" in str(info.value)
    assert not (tmp_path / arch).exists()


def test_mobilenetv2_export_tf_preprocessing(tmp_path: Path) -> None:
    manifest = export_model(tmp_path / "mnv2", arch="mobilenetv2", weights="random", input_size=96)
    assert manifest.preprocess.color_order == "RGB" and manifest.preprocess.mean == (127.5, 127.5, 127.5)
    assert manifest.provenance["parity"]["probabilities_max_abs"] <= 1e-4
    ModelFolder.load(tmp_path / "mnv2")


# --- user models ------------------------------------------------------------------------------------------


def _small_model(head: str = "gap", activation: str = "softmax") -> object:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x) if head == "gap" else keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(3, activation=activation)(x)
    return keras.Model(inputs, outputs, name=f"small_{head}")


def test_user_model_with_labels(tmp_path: Path, photo_arrays: dict[str, np.ndarray]) -> None:
    keras.utils.set_random_seed(3)
    path = tmp_path / "small.keras"
    _small_model().save(path)
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    manifest = export_model(tmp_path / "out", model_path=path, labels_path=tmp_path / "labels.txt")
    assert manifest.num_classes == 3 and manifest.provenance["source"] == "keras model file"
    engine = CamEngine.load(tmp_path / "out", device="cpu")
    assert engine.labels == ("cat", "dog", "bird")
    result = engine.explain(photo_arrays["chelsea"], classes="dog")[0]
    assert result.targets[0].label == "dog"


def test_user_model_with_logits_gets_softmax(tmp_path: Path) -> None:
    path = tmp_path / "logits.keras"
    _small_model(activation="linear").save(path)
    manifest = export_model(tmp_path / "out", model_path=path)
    assert manifest.provenance["softmax_appended"] is True
    engine = CamEngine.load(tmp_path / "out", device="cpu", warmup=False)
    probs, _ = engine.run(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_user_model_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "small.keras"
    _small_model().save(path)
    (tmp_path / "two.txt").write_text("a\nb\n")
    with pytest.raises(LabelsError, match="2 lines but the model has 3 classes"):
        export_model(tmp_path / "o1", model_path=path, labels_path=tmp_path / "two.txt")
    with pytest.raises(KerasModelNotFoundError):
        export_model(tmp_path / "o2", model_path=tmp_path / "missing.keras")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(KerasModelLoadError):
        export_model(tmp_path / "o3", model_path=tmp_path / "junk.keras")
    flat = tmp_path / "flat.keras"
    _small_model(head="flatten").save(flat)
    with pytest.raises(UnsupportedHeadError, match="flattens"):
        export_model(tmp_path / "o4", model_path=flat, head_kind="linear")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_export_command_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "export", "--model", str(tmp_path / "nope.keras"),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: Keras model not found: {tmp_path / 'nope.keras'}"]
    assert "Traceback" not in proc.stderr


# --- preprocessing parity with keras.utils.load_img ----------------------------------------------------


@pytest.mark.parametrize(("arch", "module"), [("resnet50", "resnet50"), ("mobilenetv2", "mobilenet_v2"),
                                              ("densenet121", "densenet")])
@pytest.mark.parametrize("photo", ["chelsea.jpg", "chelsea.png", "coffee.jpg", "astronaut.png"])
def test_preprocessing_matches_keras_load_img(arch: str, module: str, photo: str,
                                              photo_files: dict[str, Path]) -> None:
    path = photo_files[photo]
    reference = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(224, 224)))
    reference = getattr(keras.applications, module).preprocess_input(reference[None].copy())[0]
    preprocessor = Preprocessor(InputSpec("image", "NHWC", 224, 224), ARCHITECTURES[arch].preprocess)
    ours = preprocessor.tensor(load_image(path).bgr)
    assert np.abs(ours - reference).max() <= 1e-3


# --- gradient-defined methods against tf.GradientTape --------------------------------------------------


def _autograd_maps(model: object, features_nhwc: np.ndarray, class_id: int, score: str) -> dict[str, np.ndarray]:
    """Each method's published formula applied to real autograd gradients of the Keras model's head.

    The features are the runtime's (ONNX) ones, so the comparison measures the closed forms alone; how closely
    ONNX features follow Keras' is the exporter's parity check (features_rtol).
    """
    head = find_cam_head(model)
    features = tf.convert_to_tensor(features_nhwc)
    with tf.GradientTape() as tape:
        tape.watch(features)
        pooled = head.pooling(features)
        logits = tf.matmul(pooled, head.dense.kernel) + head.dense.bias
        target = logits[:, class_id] if score == "logit" else tf.nn.softmax(logits)[:, class_id]
    grads = tape.gradient(target, features).numpy()[0].astype(np.float64)  # [h, w, C]
    return maps_from_gradients(features.numpy()[0], grads)


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_gradient_methods_match_autograd(score: str, resnet_folder: Path, resnet_keras: object,
                                         photo_files: dict[str, Path]) -> None:
    engine = CamEngine.load(resnet_folder, device="cpu")
    image = load_image(photo_files["chelsea.jpg"])
    inputs = engine.preprocessor.tensor(image.bgr)[None]
    probs, features = engine.run(inputs)
    compared = 0
    for class_id in (int(np.argsort(probs[0])[-1]), int(np.argsort(probs[0])[-5])):
        reference = _autograd_maps(resnet_keras, features, class_id, score)
        for method, expected in reference.items():
            raw = engine.explain(image.bgr, method=method, classes=class_id, score=score,
                                 array_order="BGR")[0].targets[0].raw
            scale = np.abs(expected).max()
            if scale == 0:  # ReLU removed everything (a class the image argues against): both must be zero
                assert np.abs(raw).max() <= 1e-9, f"{method} ({score}, class {class_id}) should be all zero"
                continue
            compared += 1
            assert np.abs(raw - expected).max() / scale <= 1e-4, f"{method} ({score}, class {class_id})"
    assert compared >= 5, "too few non-zero reference maps: the comparison would be vacuous"


def test_gradcam_logit_equals_cam_over_hw(resnet_folder: Path, photo_files: dict[str, Path]) -> None:
    engine = CamEngine.load(resnet_folder, device="cpu")
    cam = engine.explain(photo_files["coffee.jpg"], method="cam")[0].targets[0].raw
    grad = engine.explain(photo_files["coffee.jpg"], method="gradcam")[0].targets[0].raw
    np.testing.assert_allclose(grad, np.maximum(cam, 0) / 49, rtol=1e-5, atol=1e-6 * np.abs(cam).max())


def test_local_weights_file(tmp_path: Path) -> None:
    keras.utils.set_random_seed(11)
    source = ARCHITECTURES["mobilenetv2"].build(None, 96)
    source.save_weights(tmp_path / "mnv2.weights.h5")
    manifest = export_model(tmp_path / "out", arch="mobilenetv2", weights=str(tmp_path / "mnv2.weights.h5"),
                            input_size=96)
    assert manifest.provenance["weights"].startswith("file mnv2.weights.h5 sha256 ")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "dense_weights.npy"),
                                  find_cam_head(source).dense.kernel.numpy())
    with pytest.raises(WeightsFileError):
        export_model(tmp_path / "bad", arch="mobilenetv2", weights=str(tmp_path / "missing.h5"), input_size=96)


def test_keras_download_message_stays_off_stdout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from keras.src.utils import file_utils, io_utils

    def offline_get_file(fname: str | None = None, origin: str | None = None, **_: object) -> str:
        io_utils.print_msg(f"Downloading data from {origin}")  # what Keras does before fetching
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno 101] Network is unreachable")

    monkeypatch.setattr(file_utils, "get_file", offline_get_file)
    monkeypatch.setattr(io_utils, "is_interactive_logging_enabled", lambda: True)
    with pytest.raises(WeightsUnavailableError):
        export_model(tmp_path / "out", arch="resnet50", weights="imagenet")
    captured = capsys.readouterr()
    assert "Downloading data from" not in captured.out
    assert "Downloading data from" in captured.err
