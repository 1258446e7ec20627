"""Non-linear heads end to end (needs the export extra): export, gradient parity with tf.GradientTape on the
Keras model for each architecture, the method × head matrix, tampered graphs, and a trained fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from paper_maps import maps_from_gradients

tf = pytest.importorskip("tensorflow", reason="the export extra (tensorflow, tf2onnx) is not installed")
keras = pytest.importorskip("keras")

from cam_runtime import CamEngine  # noqa: E402
from cam_runtime.errors import ChecksumMismatchError, GraphMismatchError, HeadKindError  # noqa: E402
from cam_runtime.imaging import load_image  # noqa: E402
from cam_runtime.methods import METHODS  # noqa: E402
from cam_runtime.model import sha256_file  # noqa: E402
from export.architectures import ARCHITECTURES  # noqa: E402
from export.errors import UnsupportedHeadError  # noqa: E402
from export.exporter import _build_application, export_model  # noqa: E402

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]

GRADIENT_METHODS = ("gradcam", "hirescam", "xgradcam", "layercam", "gradcam++")


def _logit_and_feature_model(model: object, feature_layer: str) -> tuple[object, bool]:
    """keras.Model(inputs → [features, scores]) as in Keras' Grad-CAM example, and whether scores are logits.

    A final softmax Activation is skipped; a final Dense(softmax) is switched to linear by the caller."""
    name = feature_layer.rsplit(".", 1)[0]
    try:
        features = model.get_layer(name).output
    except ValueError:  # produced by an operation that is not a layer (ConvNeXt's residual ``x + shortcut``)
        from export.head_graphs import find_graph_head

        features = find_graph_head(model).features
        assert features._keras_history.operation.name == name
    last = model.layers[-1]
    if type(last).__name__ == "Activation" and last.activation.__name__ == "softmax":
        return keras.Model(model.inputs, [features, last.input]), True
    return keras.Model(model.inputs, [features, model.output]), getattr(last, "activation", None).__name__ != "softmax"


def tape_reference(model: object, feature_layer: str, inputs: np.ndarray, class_id: int,
                   score: str) -> dict[str, np.ndarray]:
    """Each method's published formula applied to tf.GradientTape gradients of the whole Keras model."""
    last = model.layers[-1]
    swap = score == "logit" and getattr(last, "activation", None) is keras.activations.softmax
    saved = last.activation if swap else None
    try:
        if swap:
            last.activation = keras.activations.linear
        grad_model, are_logits = _logit_and_feature_model(model, feature_layer)
        with tf.GradientTape() as tape:
            acts_t, out = grad_model([inputs], training=False)
            if score == "probability" and are_logits:
                out = tf.nn.softmax(out, axis=-1)
            target = out[:, class_id]
        grads = tape.gradient(target, acts_t).numpy()[0].astype(np.float64)
    finally:
        if swap:
            last.activation = saved
    return maps_from_gradients(acts_t.numpy()[0], grads)


def assert_maps_match_tape(folder: Path, model: object, image: np.ndarray) -> int:
    """Engine maps vs the tape reference for two classes and both scores; returns how many were non-zero."""
    engine = CamEngine.load(folder, device="cpu")
    feature_layer = engine.manifest.provenance["feature_layer"]
    decoded = load_image(image)
    inputs = engine.preprocessor.tensor(decoded.bgr)[None]
    probs, _ = engine.run(inputs)
    order = np.argsort(-probs[0])
    compared = 0
    for score in ("logit", "probability"):
        for class_id in (int(order[0]), int(order[min(4, len(order) - 1)])):
            reference = tape_reference(model, feature_layer, inputs, class_id, score)
            for method, expected in reference.items():
                raw = engine.explain(image, method=method, classes=class_id, score=score)[0].targets[0].raw
                scale = np.abs(expected).max()
                if scale == 0:
                    assert np.abs(raw).max() <= 1e-9, f"{method} ({score}, class {class_id}) should be all zero"
                    continue
                compared += 1
                error = np.abs(raw - expected).max() / scale
                assert error <= 1e-4, f"{method} ({score}, class {class_id}): relative error {error:.2e}"
    return compared


ARCH_SIZES = {  # arch → (input size, feature shape)
    "vgg16": (64, [2, 2, 512]),
    "vgg19": (32, [1, 1, 512]),
    "mobilenetv3small": (64, [2, 2, 576]),
    "mobilenetv3large": (64, [2, 2, 960]),
    "convnexttiny": (64, [2, 2, 768]),
    "efficientnetv2b0": (64, [2, 2, 1280]),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders exported once per module (lazily, by arch)."""
    return {}


def _export(arch: str, exported: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    if arch not in exported:
        folder = tmp_path_factory.mktemp("graph") / arch
        keras.backend.clear_session()  # layer names restart, so the rebuilt reference model has the same names
        # EfficientNetV2B0's head is GAP → Dense: forcing the graph head checks the graph path on it too.
        export_model(folder, arch=arch, weights="random", input_size=ARCH_SIZES[arch][0],
                     head_kind="graph" if arch == "efficientnetv2b0" else "auto")
        exported[arch] = folder
    return exported[arch]


@pytest.mark.parametrize("arch", sorted(ARCH_SIZES))
def test_architecture_exports_with_gradient_parity(arch: str, exported: dict[str, Path],
                                                   tmp_path_factory: pytest.TempPathFactory,
                                                   photo_arrays: dict[str, np.ndarray]) -> None:
    folder = _export(arch, exported, tmp_path_factory)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["head"]["kind"] == "graph" and manifest["files"]["weights"] is None
    assert manifest["files"]["head"] == "head.onnx" and manifest["files"]["gradient"] == "gradient.onnx"
    assert manifest["feature_shape"] == ARCH_SIZES[arch][1]
    parity = manifest["parity"]
    assert parity["probabilities_max_abs"] <= 1e-4 and parity["features_max_rel"] <= 2e-3
    graphs = parity["head_graphs"]
    assert graphs["head_probabilities_max_abs"] <= 1e-4 and len(graphs["classes"]) >= 2
    assert set(graphs["gradient_max_rel"]) == {"logit", "probability"}
    assert max(graphs["gradient_max_rel"].values()) <= 1e-4
    keras.backend.clear_session()
    model, _ = _build_application(ARCHITECTURES[arch], "random", ARCH_SIZES[arch][0])  # same seed, same weights
    assert assert_maps_match_tape(folder, model, photo_arrays["chelsea"]) >= 5


def _user_model(head: str) -> object:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)  # raw pixels in: keeps the random softmax away from saturation
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if head == "hidden":
        x = keras.layers.Dense(16, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(5, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=f"user_{head}")


def test_user_model_with_hidden_dense(tmp_path: Path, photo_arrays: dict[str, np.ndarray]) -> None:
    keras.utils.set_random_seed(5)
    model = _user_model("hidden")
    model.save(tmp_path / "user.keras")
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\ne\n")
    manifest = export_model(tmp_path / "out", model_path=tmp_path / "user.keras", labels_path=tmp_path / "labels.txt")
    assert manifest.head is not None and manifest.provenance["feature_layer"] == "last_conv.output"
    assert [entry.split(" ")[1] for entry in manifest.provenance["head_layers"]] == [
        "(GlobalAveragePooling2D)", "(Dense)", "(Dropout)", "(Dense)"]
    loaded = keras.models.load_model(tmp_path / "user.keras", compile=False)
    assert assert_maps_match_tape(tmp_path / "out", loaded, photo_arrays["coffee"]) >= 5
    with pytest.raises(UnsupportedHeadError, match="Dense classifier follows another Dense"):
        export_model(tmp_path / "lin", model_path=tmp_path / "user.keras", head_kind="linear")


def test_transformer_without_spatial_features_refused(tmp_path: Path) -> None:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 8, strides=8)(inputs)
    x = keras.layers.Reshape((16, 16))(x)
    x = keras.layers.Add()([x, keras.layers.MultiHeadAttention(2, 8)(x, x)])
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    keras.Model(inputs, outputs, name="tiny_vit").save(tmp_path / "vit.keras")
    with pytest.raises(UnsupportedHeadError, match="no spatial conv features"):
        export_model(tmp_path / "out", model_path=tmp_path / "vit.keras")
    assert not (tmp_path / "out").exists()


# --- method × head matrix -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_and_graph(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """One GAP → Dense model exported with its linear head and as a head graph, plus a hidden-layer model."""
    root = tmp_path_factory.mktemp("matrix")
    keras.utils.set_random_seed(8)
    _user_model("gap").save(root / "gap.keras")
    _user_model("hidden").save(root / "hidden.keras")
    export_model(root / "linear", model_path=root / "gap.keras")
    export_model(root / "graph", model_path=root / "gap.keras", head_kind="graph")
    export_model(root / "hidden", model_path=root / "hidden.keras")
    return root / "linear", root / "graph", root / "hidden"


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("score", ["logit", "probability"])
def test_method_head_matrix(method: str, score: str, linear_and_graph: tuple[Path, Path, Path],
                            photo_arrays: dict[str, np.ndarray]) -> None:
    linear, graph, hidden = (CamEngine.load(p, device="cpu") for p in linear_and_graph)
    images = [photo_arrays["chelsea"], photo_arrays["astronaut"]]
    options = {"score": score} if method not in ("cam", "eigencam", "scorecam") else {}
    if method == "cam":
        for engine in (graph, hidden):
            with pytest.raises(HeadKindError, match="defined only for a GAP → Dense head"):
                engine.explain(images, method=method, top_k=2)
        assert linear.explain(images, method=method, top_k=2)[0].targets[0].raw.any()
        return
    if method in ("eigencam", "scorecam") and score == "probability":
        pytest.skip(f"{method} has no score option")
    results = {name: engine.explain(images, method=method, top_k=2, **options)
               for name, engine in (("linear", linear), ("graph", graph), ("hidden", hidden))}
    for a, b in zip(results["linear"], results["graph"], strict=True):
        for ta, tb in zip(a.targets, b.targets, strict=True):
            assert ta.class_id == tb.class_id
            scale = max(np.abs(ta.raw).max(), 1e-12)
            assert np.abs(ta.raw - tb.raw).max() / scale <= 1e-4, f"{method}: linear and graph heads disagree"
    hidden_maps = [t.raw for r in results["hidden"] for t in r.targets]
    assert all(m.shape == (7, 7) and np.isfinite(m).all() for m in hidden_maps)
    assert any(np.abs(m).max() > 0 for m in hidden_maps)


def test_graph_head_target_objects_and_device_maps(linear_and_graph: tuple[Path, Path, Path],
                                                   photo_arrays: dict[str, np.ndarray]) -> None:
    from cam_runtime import DifferenceTarget

    linear, graph = (CamEngine.load(p, device="cpu") for p in linear_and_graph[:2])
    target = [DifferenceTarget(1, 3)]
    for score in ("logit", "probability"):
        a = linear.explain(photo_arrays["coffee"], method="hirescam", classes=target, score=score)[0].targets[0].raw
        b = graph.explain(photo_arrays["coffee"], method="hirescam", classes=target, score=score)[0].targets[0].raw
        assert np.abs(a).max() > 0 and np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    with pytest.raises(HeadKindError, match="device_maps"):
        CamEngine.load(linear_and_graph[1], device="cpu", device_maps=True)


# --- ReciproCAM through head.onnx's position_masks input -------------------------------------------------


def _head_model(kind: str) -> object:
    """A small CNN with the head of VGG (flatten), MobileNetV3 (pooled 1×1 convs) or a global max pooling."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu", name="last_conv")(x)
    if kind == "flatten":
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(16, activation="relu")(x)
        outputs = keras.layers.Dense(5, activation="softmax")(x)
    elif kind == "conv":
        x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
        x = keras.layers.Conv2D(16, 1, activation="hard_silu")(x)
        x = keras.layers.Dropout(0.2)(x)
        x = keras.layers.Conv2D(5, 1)(x)
        x = keras.layers.Flatten()(x)
        outputs = keras.layers.Activation("softmax")(x)
    else:
        x = keras.layers.GlobalMaxPooling2D()(x)
        outputs = keras.layers.Dense(5, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=f"head_{kind}")


@pytest.mark.parametrize("kind", ["flatten", "conv", "maxpool"])
def test_reciprocam_through_position_masks_equals_masked_copies(kind: str, tmp_path: Path,
                                                                 photo_arrays: dict[str, np.ndarray]) -> None:
    from cam_runtime.heads import GraphHead, Head
    from cam_runtime.methods import HeadInputs, ReciproCAM

    keras.utils.set_random_seed(11)
    _head_model(kind).save(tmp_path / "m.keras")
    manifest = export_model(tmp_path / "out", model_path=tmp_path / "m.keras")
    assert manifest.provenance["parity"]["head_graphs"]["masked_probabilities_max_abs"] <= 1e-4
    engine = CamEngine.load(tmp_path / "out", device="cpu")
    head = engine.head
    assert isinstance(head, GraphHead) and head.takes_masks
    images = [photo_arrays[name] for name in ("chelsea", "coffee", "astronaut")]
    batch = np.stack([engine.preprocessor.tensor(load_image(i).bgr) for i in images])
    probs, features = engine.run(batch)
    h, w = features.shape[1:3]
    for gaussian in (True, False):
        masks = ReciproCAM(gaussian=gaussian).masks(h, w)
        fast = head.masked_forward(features, masks, batch_size=7)  # several graph calls, a partial last one
        slow = Head.masked_forward(head, features, masks, batch_size=7)  # the masked copies through head.forward
        for a, b in zip(fast, slow, strict=True):
            assert a.shape == (3, h * w, 5)
            assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1e-6)
    classes = np.argsort(-probs, axis=1)[:, :2]
    for score in ("logit", "probability"):
        maps = ReciproCAM(score=score).maps(HeadInputs(features, probs, None, classes, head=head))
        masks = ReciproCAM().masks(h, w)
        for i in range(3):  # the definition: each masked copy through the head, the target's score, min-shifted
            masked = features[i][None] * masks[..., None]
            logits, p = head.forward(masked)
            values = (logits if score == "logit" else p)[:, classes[i]].T.reshape(2, h, w)
            expected = values - values.min(axis=(1, 2), keepdims=True)
            assert np.abs(maps[i] - expected).max() <= 1e-5 * max(np.abs(expected).max(), 1e-6)


# --- refused graphs -------------------------------------------------------------------------------------


def test_tampered_or_swapped_head_graphs_refused(linear_and_graph: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import shutil

    source = linear_and_graph[2]
    for role in ("head.onnx", "gradient.onnx"):
        folder = tmp_path / f"tampered-{role}"
        shutil.copytree(source, folder)
        data = bytearray((folder / role).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / role).write_bytes(bytes(data))
        with pytest.raises(ChecksumMismatchError, match=role):
            CamEngine.load(folder, device="cpu")
    # Swapped graphs with re-computed checksums: the checksums pass, the graphs' signatures do not.
    folder = tmp_path / "swapped"
    shutil.copytree(source, folder)
    (folder / "head.onnx").write_bytes((source / "gradient.onnx").read_bytes())
    (folder / "gradient.onnx").write_bytes((source / "head.onnx").read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    for role in ("head.onnx", "gradient.onnx"):
        manifest["sha256"][role] = sha256_file(folder / role)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GraphMismatchError, match="graph inputs"):
        CamEngine.load(folder, device="cpu")
    # A head graph from another model (different channels) is refused against the features output.
    other = tmp_path / "foreign"
    shutil.copytree(source, other)
    (other / "head.onnx").write_bytes((linear_and_graph[1] / "head.onnx").read_bytes())
    (other / "gradient.onnx").write_bytes((linear_and_graph[1] / "gradient.onnx").read_bytes())
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["sha256"]["head.onnx"] = sha256_file(other / "head.onnx")
    manifest["sha256"]["gradient.onnx"] = sha256_file(other / "gradient.onnx")
    (other / "manifest.json").write_text(json.dumps(manifest))
    CamEngine.load(other, device="cpu")  # same channels (12) and classes: a consistent swap is loadable


# --- a trained fixture with a non-linear head -------------------------------------------------------------


def test_trained_hidden_head_points_at_the_glyph(tmp_path: Path) -> None:
    """A small CNN with GAP → Dense(32, relu) → Dense(5) trained on the shapes data: Grad-CAM through the
    gradient graph must point inside the glyph's box on ≥ 90% of held-out images."""
    from cam_runtime.evaluation import pointing_hit
    from cam_runtime.ground_truth_boxes import GroundTruthBox
    from export.shapes_data import CLASSES, make_dataset

    keras.backend.clear_session()
    keras.utils.set_random_seed(123)
    train, test = make_dataset(4000, seed=123), make_dataset(60, seed=124)
    layers = keras.layers
    inputs = keras.Input((48, 48, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    for i, (filters, dilation) in enumerate(((16, 1), (32, 1), (48, 1), (64, 2))):  # the shapes fixture's trunk
        if i in (1, 2):
            x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU(name="features" if i == 3 else None)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(32, activation="relu")(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    epochs, batch = 7, 32
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, epochs * -(-len(train) // batch))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy")
    model.fit(train.images.astype(np.float32), train.labels, epochs=epochs, batch_size=batch, verbose=0)
    model.save(tmp_path / "hidden.keras")
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    export_model(tmp_path / "out", model_path=tmp_path / "hidden.keras", labels_path=tmp_path / "labels.txt")
    engine = CamEngine.load(tmp_path / "out", device="cpu")
    assert engine.manifest.head is not None
    results = engine.explain(list(test.images), method="gradcam", classes=[[int(c)] for c in test.labels])
    hits = [pointing_hit(r.heatmap, [GroundTruthBox(*map(int, box), label=str(label))])
            for r, label, box in zip(results, test.labels, test.boxes, strict=True)]
    accuracy = float(np.mean([r.top_k[0].class_id == label for r, label in zip(results, test.labels, strict=True)]))
    assert accuracy >= 0.8, f"the fixture did not train (held-out accuracy {accuracy:.2f})"
    assert np.mean(hits) >= 0.9, f"pointing game {np.mean(hits):.3f}"
