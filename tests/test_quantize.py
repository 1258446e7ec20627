"""INT8 and FP16 model folders: written atomically, fidelity reported, and a broken quantization caught."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cam_runtime.derive import acceptance_problems, fp16_folder, quantize_folder
from cam_runtime.derive.common import candidate_engine, finish_variant
from cam_runtime.derive.fidelity import EvaluationSets, fidelity_report
from cam_runtime.engine import CamEngine
from cam_runtime.errors import FidelityError, InvalidArgumentError, OutputExistsError
from cam_runtime.model import InputSpec, OutputSpec, Preprocess, write_model_folder
from tiny_models import make_tiny_folder

SIZE = 64
COLORS = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}  # BGR
TRAINED_FIXTURE = Path(__file__).resolve().parents[1] / "models" / "fixtures" / "shapes"


def color_model_folder(dest: Path) -> Path:
    """A 'trained' tiny CNN with a known job: which colour (R, G or B) dominates the image, and where.

    Conv channels 0-2 respond to one saturated colour each (its channel up, the others down); channels 3-5
    are weaker copies. The dense head maps each colour's channels to its class, so predictions are
    confident and the CAM highlights the coloured blob: a real signal a broken quantization destroys.
    """
    channels, classes = 6, 3
    conv_w = np.zeros((channels, 3, 4, 4), np.float32)
    for k in range(channels):
        colour = k % 3
        conv_w[k, :, :, :] = -0.5 / 16
        conv_w[k, colour, :, :] = 1.0 / 16 * (1.0 if k < 3 else 0.6)
    conv_b = np.full(channels, -0.1, np.float32)
    dense_w = np.zeros((channels, classes), np.float32)
    for k in range(channels):
        dense_w[k, k % 3] = 4.0
    dense_b = np.zeros(classes, np.float32)
    nodes = [
        helper.make_node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["image_nchw", "conv_w", "conv_b"], ["conv"], strides=[4, 4]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled4d"]),
        helper.make_node("Flatten", ["pooled4d"], ["pooled"], axis=1),
        helper.make_node("Gemm", ["pooled", "dense_w", "dense_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("Transpose", ["relu"], ["features"], perm=[0, 2, 3, 1]),
    ]
    feat = SIZE // 4
    graph = helper.make_graph(
        nodes, "colours", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", feat, feat, channels])],
        [numpy_helper.from_array(a, n) for a, n in
         ((conv_w, "conv_w"), (conv_b, "conv_b"), (dense_w, "dense_w"), (dense_b, "dense_b"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_model_folder(dest, model=model.SerializeToString(), weights=dense_w, bias=dense_b,
                       labels=list(COLORS), name="colours", input_spec=InputSpec("image", "NHWC", SIZE, SIZE),
                       preprocess=Preprocess("RGB", (0.0, 0.0, 0.0), (255.0, 255.0, 255.0), "area"),
                       outputs=OutputSpec("probabilities", "features", "NHWC"))
    return dest


def blob_images(folder: Path, count: int, seed: int) -> Path:
    """Grey photos-of-sorts with one coloured disc each, mixed sizes, as PNG."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(48, 160, 2))
        image = np.clip(rng.normal(110, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        colour = list(COLORS.values())[i % 3]
        centre = (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4)))
        cv2.circle(image, centre, int(min(h, w) * rng.uniform(0.15, 0.3)), colour, -1)
        cv2.imwrite(str(folder / f"{i:02d}.png"), image)
    return folder


@pytest.fixture(scope="session")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return color_model_folder(tmp_path_factory.mktemp("quant") / "colours")


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("quant-images")
    return blob_images(root / "calibration", 12, seed=1), blob_images(root / "held-out", 9, seed=2)


@pytest.fixture(scope="session")
def int8_colours(colours: Path, image_sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    reports = []
    out = tmp_path_factory.mktemp("quant-out") / "colours-int8"
    result = quantize_folder(colours, out,
                             calibration=image_sets[0], held_out=image_sets[1], timing_runs=3,
                             on_report=reports.append)
    return result, reports, out


def test_int8_folder_has_fidelity_report_and_explains(int8_colours, colours, image_sets):
    result, reports, int8_root = int8_colours
    assert reports and set(reports[0]) == {"calibration", "held-out"}
    manifest = result.manifest
    assert manifest.provenance["variant"] == "int8"
    quant = manifest.provenance["quantization"]
    assert quant["chosen"] in ("U8S8", "S8S8") and quant["candidates"] == ["U8S8", "S8S8"]
    assert quant["format"] == "QDQ" and quant["per_channel"] is True
    assert set(quant["batch1_latency_ms"]) == {"fp32", "u8s8", "s8s8"}
    sets = manifest.provenance["fidelity"]["sets"]
    assert sets["calibration"]["images"] == 12 and sets["held-out"]["images"] == 9
    assert sets["held-out"]["top1_agreement"] >= 0.9 and sets["held-out"]["map_correlation_mean"] > 0.95
    assert manifest.provenance["fidelity"]["accepted_below_thresholds"] is False
    folder = Path(manifest.provenance["derived_from"]["path"])
    assert folder == colours
    model = onnx.load(str(int8_root / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    fp32 = CamEngine.load(colours, device="cpu")
    int8 = CamEngine.load(int8_root, device="cpu")  # checksums verified
    images = sorted(image_sets[1].iterdir())
    for ref, got in zip(fp32.explain(images), int8.explain(images), strict=True):
        assert got.top_k[0].class_id == ref.top_k[0].class_id
        assert got.boxes[0].iou(ref.boxes[0]) > 0.6


def corrupt_weight_scales(model_path: Path, dest: Path) -> Path:
    """Scramble the per-channel scales of the quantized conv weights (what a wrong-result kernel looks like)."""
    model = onnx.load(str(model_path))
    inits = {i.name: i for i in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and len(numpy_helper.to_array(inits[n.input[0]]).shape) == 4]
    assert weight_dq, "expected a per-channel DequantizeLinear of the conv weights"
    scale = inits[weight_dq[0].input[1]]
    values = numpy_helper.to_array(scale)
    scrambled = -values[::-1]  # wrong sign and wrong channel order
    scale.CopyFrom(numpy_helper.from_array(scrambled.astype(values.dtype), scale.name))
    onnx.save(model, str(dest))
    return dest


def test_fidelity_report_catches_corrupted_scale(int8_colours, colours, image_sets, tmp_path):
    _, _, int8_root = int8_colours
    source = CamEngine.load(colours, device="cpu")
    sets = EvaluationSets.load(source, image_sets[0], image_sets[1])
    healthy = fidelity_report(source, candidate_engine(source, int8_root / "model.onnx", tmp_path), sets)
    assert acceptance_problems(healthy) == []
    broken_path = corrupt_weight_scales(int8_root / "model.onnx", tmp_path / "broken.onnx")
    broken = fidelity_report(source, candidate_engine(source, broken_path, tmp_path), sets)
    problems = acceptance_problems(broken)
    assert problems, broken
    assert broken["held-out"].map_correlation_mean < healthy["held-out"].map_correlation_mean - 0.1
    with pytest.raises(FidelityError, match="int8 model rejected"):
        finish_variant(source, broken_path, tmp_path / "out", variant="int8", fidelity=broken, details={},
                       force=False, accept_low_fidelity=False)
    assert not (tmp_path / "out").exists()
    accepted = finish_variant(source, broken_path, tmp_path / "out", variant="int8", fidelity=broken,
                              details={}, force=False, accept_low_fidelity=True)
    assert accepted.manifest.provenance["fidelity"]["accepted_below_thresholds"] is True


def test_trained_fixture_int8_faithful_and_corruption_caught(tmp_path):
    """The trained shapes CNN: INT8 passes the thresholds on held-out glyphs; a corrupted scale does not."""
    images = sorted((TRAINED_FIXTURE.parent / "shapes-test" / "images").glob("*.png"))
    calibration, held_out = tmp_path / "calibration", tmp_path / "held-out"
    for folder, subset in ((calibration, images[:24]), (held_out, images[24:56])):
        folder.mkdir()
        for image in subset:
            (folder / image.name).write_bytes(image.read_bytes())
    source = CamEngine.load(TRAINED_FIXTURE, device="cpu")
    result = quantize_folder(source, tmp_path / "int8", calibration=calibration, held_out=held_out,
                             timing_runs=2)  # raises FidelityError if below the thresholds
    assert result.fidelity["held-out"].top1_agreement >= 0.9
    assert result.fidelity["held-out"].map_correlation_mean > 0.9
    broken = corrupt_weight_scales(tmp_path / "int8" / "model.onnx", tmp_path / "broken.onnx")
    sets = EvaluationSets.load(source, calibration, held_out)
    report = fidelity_report(source, candidate_engine(source, broken, tmp_path), sets)
    assert acceptance_problems(report), report


def test_fp16_keeps_float32_io_and_matches(colours, image_sets, tmp_path):
    result = fp16_folder(colours, tmp_path / "fp16", calibration=image_sets[0], held_out=image_sets[1],
                         device="cpu", timing_runs=2)
    model = onnx.load(str(tmp_path / "fp16" / "model.onnx"))
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*model.graph.input, *model.graph.output])
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    assert result.fidelity["held-out"].top1_agreement == 1.0
    assert result.fidelity["held-out"].map_correlation_min > 0.999
    saved = json.loads((tmp_path / "fp16" / "manifest.json").read_text())
    assert saved["variant"] == "fp16" and saved["conversion"]["keep_io_types"] is True
    assert CamEngine.load(tmp_path / "fp16", device="cpu").explain(sorted(image_sets[1].iterdir())[0])


def test_nchw_random_tiny_model_quantizes(tmp_path, image_sets):
    folder = make_tiny_folder(tmp_path / "tiny", "NCHW", seed=3)
    result = quantize_folder(folder, tmp_path / "tiny-int8", calibration=image_sets[0], activation="s8",
                             timing_runs=2, accept_low_fidelity=True)
    assert result.details["chosen"] == "S8S8" and result.details["candidates"] == ["S8S8"]
    assert CamEngine.load(tmp_path / "tiny-int8", device="cpu").explain(sorted(image_sets[0].iterdir())[0])


def test_bad_arguments_fail_before_work(colours, image_sets, tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError):
        quantize_folder(colours, tmp_path / "exists", calibration=image_sets[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="no images"):
        quantize_folder(colours, tmp_path / "new", calibration=tmp_path / "empty")
    with pytest.raises(InvalidArgumentError, match="activation"):
        quantize_folder(colours, tmp_path / "new", calibration=image_sets[0], activation="u4")
    assert not (tmp_path / "new").exists()


def test_cli_quantize(colours, image_sets, tmp_path):
    from typer.testing import CliRunner

    from cam_runtime.cli import app

    out = tmp_path / "cli-int8"
    args = ["quantize", str(out), "--model", str(colours), "--calibration", str(image_sets[0]),
            "--held-out", str(image_sets[1]), "--activation", "u8", "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["details"]["chosen"] == "U8S8" and "held-out" in report["fidelity"]
    assert (out / "manifest.json").is_file()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output


def test_derived_folders_keep_every_manifest_section(colours, image_sets, tmp_path):
    """A section the runtime does not know (and an unknown key inside a known one) survives INT8 and FP16."""
    import shutil

    source = tmp_path / "source"
    shutil.copytree(colours, source)
    (source / "notes.txt").write_text("kept byte for byte\n", encoding="utf-8")
    data = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    data["x_deployment"] = {"owner": "team-a", "targets": ["edge", "gpu"]}
    data["input"]["comment"] = "an unknown key inside a known section"
    data["sha256"]["notes.txt"] = hashlib.sha256(b"kept byte for byte\n").hexdigest()
    (source / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    derived = {
        "int8": quantize_folder(source, tmp_path / "int8", calibration=image_sets[0], held_out=image_sets[1],
                                activation="u8", timing_runs=1),
        "fp16": fp16_folder(source, tmp_path / "fp16", calibration=image_sets[0], held_out=image_sets[1],
                            device="cpu", timing_runs=1),
    }
    for variant, result in derived.items():
        written = json.loads((tmp_path / variant / "manifest.json").read_text(encoding="utf-8"))
        assert written["x_deployment"] == data["x_deployment"]
        assert written["input"]["comment"] == data["input"]["comment"]
        assert written["name"] == f"{data['name']}-{variant}" and written["variant"] == variant
        assert (tmp_path / variant / "notes.txt").read_text(encoding="utf-8") == "kept byte for byte\n"
        assert written["sha256"]["model.onnx"] != data["sha256"]["model.onnx"]  # the new graph's digest
        assert written["sha256"]["dense_weights.npy"] == data["sha256"]["dense_weights.npy"]
        assert result.manifest is not None and result.manifest.provenance["x_deployment"]["owner"] == "team-a"
        CamEngine.load(tmp_path / variant, device="cpu")  # every checksum of the copy verifies
