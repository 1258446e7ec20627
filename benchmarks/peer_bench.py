"""cam-runtime against OpenVINO XAI (white-box ReciproCAM) and pytorch-grad-cam, per image, decode → overlay.

OpenVINO XAI pins its own OpenVINO (1.1 → openvino 2024.4), so it gets its own environment::

    python3 -m venv /work/venv-xai && /work/venv-xai/bin/pip install openvino-xai -e '.[cpu,openvino-runtime]'
    /work/venv-xai/bin/python benchmarks/peer_bench.py     # ~2-3 min on 2 cores; pytorch-grad-cam part runs
                                                           # in --torch-python (default python3) if torch is absent

Same ONNX (the EfficientNet-Lite1 folder of ``small_models.py``, ImageNet weights, NCHW), same photos
(scikit-image's chelsea 451×300 and 8 of the benchmark photos), in one run, **interleaved** (one image per
pipeline, round after round). Per image, from the JPEG file to the overlay image in memory:

- cam-runtime: ``engine.explain(path)[0].overlay()`` (decode, preprocess, model, top-1, CAM, upsample, boxes,
  colour map, blend), on onnxruntime CPU fp32, OpenVINO fp32 and OpenVINO bf16, and ReciproCAM on onnxruntime;
- OpenVINO XAI: ``cv2.imread`` → the same preprocessing (cam-runtime's Preprocessor) → ``Explainer(...)(x,
  targets=[top-1 class, known beforehand], original_input_image=bgr, overlay=True)`` (white-box ReciproCAM,
  all classes' maps in the graph, one target coloured, resized and blended); its compiled model is replaced by
  one compiled with the same OpenVINO configuration as cam-runtime's (precision hint f32 or bf16, LATENCY,
  no pinning) so both run at the stated precision;
- pytorch-grad-cam: GradCAM on the torch EfficientNet-Lite1 (CPU, fp32), decode → tensor → CAM → overlay.

Writes ``benchmarks/results/peer-<stamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))

from small_models import LITE_SIZE, MODELS, chelsea_photo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OV_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}


def xai_pipeline(folder: Path, precision: str, labels: dict[Path, int]) -> Any:
    """OpenVINO XAI's white-box ReciproCAM on the folder's ONNX: a function path → overlay (BGR→RGB uint8)."""
    import cv2
    import openvino as ov
    import openvino_xai as xai
    from openvino_xai.explainer.explainer import ExplainMode

    from cam_runtime.engine import CamEngine

    engine = CamEngine.load(folder, device="cpu", warmup=False)  # only for its preprocessing
    core = ov.Core()
    model = core.read_model(str(engine.folder.model_path))
    # XAI explains the model's (first) output: keep the probabilities, drop the extra features output.
    probabilities = engine.manifest.outputs.probabilities
    model = ov.Model([o for o in model.outputs if probabilities in o.get_names()], model.get_parameters(), "lite")
    explainer = xai.Explainer(model=model, task=xai.Task.CLASSIFICATION,
                              preprocess_fn=lambda bgr: engine.preprocessor.tensor(bgr)[None],
                              explain_mode=ExplainMode.WHITEBOX, explain_method=xai.Method.RECIPROCAM)
    method = explainer.method
    method._model_compiled = core.compile_model(  # the stated precision (its default on this CPU is bf16)
        method._model, "CPU", {**OV_CONFIG, "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]})

    def run(path: Path) -> Any:
        bgr = cv2.imread(str(path))
        explanation = explainer(bgr, targets=[labels[path]], original_input_image=bgr, overlay=True)
        return next(iter(explanation.saliency_map.values()))

    return run


def cam_runtime_pipeline(folder: Path, device: str, precision: str = "fp32", method: str = "cam") -> Any:
    """cam-runtime: a function path → overlay (the API as a user calls it)."""
    from cam_runtime.engine import CamEngine

    if device == "openvino-runtime":
        engine = CamEngine.load(folder, providers=[("OpenVINORuntime", {"precision": precision})])
    else:
        engine = CamEngine.load(folder, device=device)
    return lambda path: engine.explain(path, method=method)[0].overlay()


def bench_pytorch_grad_cam(photos: list[Path], rounds: int, threads: int = 1) -> dict[str, Any]:
    """pytorch-grad-cam GradCAM on the torch EfficientNet-Lite1, CPU fp32: decode → overlay per image (ms)."""
    import cv2
    import torch

    from torch_reference import import_pytorch_grad_cam

    gradcam = import_pytorch_grad_cam()
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from test_onnx_import_torch import HeadHooked, lite1

    # One thread: on this shared 2-core box torch's OpenMP pool with 2 threads ran 10-18x slower (spin-waits
    # against the other processes); --torch-threads changes it.
    torch.set_num_threads(threads)
    hooked = HeadHooked(lite1()).eval()
    cam = gradcam.GradCAM(model=hooked, target_layers=[hooked.head_activation])
    mean, std = np.float32(127.0), np.float32(128.0)  # the tf-lite preset the folder uses

    def run(path: Path) -> Any:
        bgr = cv2.imread(str(path))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        x = (cv2.resize(rgb, (LITE_SIZE, LITE_SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32) - mean) / std
        grayscale = cam(input_tensor=torch.from_numpy(x.transpose(2, 0, 1)[None].copy()), targets=None)[0]
        heat = cv2.resize(grayscale, (rgb.shape[1], rgb.shape[0]))
        return show_cam_on_image(rgb.astype(np.float32) / 255.0, heat, use_rgb=True)

    for path in photos[:2]:
        run(path)
    times = []
    for _ in range(rounds):
        for path in photos:
            start = time.perf_counter()
            run(path)
            times.append((time.perf_counter() - start) * 1e3)
    return {"ms": float(np.median(times)), "torch": torch.__version__, "threads": torch.get_num_threads()}


def main() -> None:
    """Run the comparison and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    parser.add_argument("--torch-python", default="python3", help="interpreter with torch for pytorch-grad-cam")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--only-torch", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from photos import make_photos

    rounds = 3 if args.quick else 10
    photos_dir = RESULTS / "photos"
    RESULTS.mkdir(parents=True, exist_ok=True)
    chelsea = chelsea_photo(RESULTS / "chelsea")
    sets = {"chelsea": [chelsea], "mixed": make_photos(photos_dir, 64)[:8]}
    if args.only_torch is not None:
        args.only_torch.write_text(json.dumps({name: bench_pytorch_grad_cam(
            items, rounds * (8 if name == "chelsea" else 1), args.torch_threads) for name, items in sets.items()}))
        return
    import openvino
    import openvino_xai
    from run import loadavg, machine_info

    from cam_runtime.engine import CamEngine
    from cam_runtime.openvino_runtime import bf16_available, cpu_capabilities, cpu_flags

    def log(message: str) -> None:
        print(f"{dt.datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)

    folder = MODELS["efficientnet-lite1"]
    if not (folder / "manifest.json").is_file():
        raise SystemExit(f"{folder} is missing: run python benchmarks/small_models.py --models efficientnet-lite1")
    reference = CamEngine.load(folder, device="cpu")
    labels = {p: reference.explain(p)[0].top_k[0].class_id for items in sets.values() for p in items}
    r: dict[str, Any] = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                         "command": " ".join(["python", "benchmarks/peer_bench.py", *sys.argv[1:]]),
                         "machine": machine_info(), "cpu_flags": cpu_flags(), "openvino": openvino.__version__,
                         "openvino_xai": openvino_xai.__version__ if hasattr(openvino_xai, "__version__") else "1.1",
                         "openvino_capabilities": cpu_capabilities(), "load_start": loadavg(), "sets": {}}
    pipelines = {"cam-runtime cam, onnxruntime fp32": cam_runtime_pipeline(folder, "cpu"),
                 "cam-runtime reciprocam, onnxruntime fp32": cam_runtime_pipeline(folder, "cpu", method="reciprocam"),
                 "cam-runtime cam, OpenVINO fp32": cam_runtime_pipeline(folder, "openvino-runtime"),
                 "OpenVINO XAI reciprocam, OpenVINO fp32": xai_pipeline(folder, "fp32", labels)}
    if bf16_available():
        pipelines["cam-runtime cam, OpenVINO bf16"] = cam_runtime_pipeline(folder, "openvino-runtime", "bf16")
        pipelines["OpenVINO XAI reciprocam, OpenVINO bf16"] = xai_pipeline(folder, "bf16", labels)
    for name, items in sets.items():
        n = rounds * (8 if name == "chelsea" else 1)
        log(f"{name}: {len(pipelines)} pipelines × {len(items)} photos × {n} rounds, interleaved")
        times: dict[str, list[float]] = {p: [] for p in pipelines}
        for run in pipelines.values():
            for path in items[:2]:
                run(path)
        for _ in range(n):
            for path in items:
                for pname, run in pipelines.items():
                    start = time.perf_counter()
                    run(path)
                    times[pname].append((time.perf_counter() - start) * 1e3)
        r["sets"][name] = {p: float(np.median(v)) for p, v in times.items()}
    log("pytorch-grad-cam")
    try:
        import torch  # noqa: F401

        r["pytorch_grad_cam"] = {name: bench_pytorch_grad_cam(items, rounds * (8 if name == "chelsea" else 1),
                                                              args.torch_threads) for name, items in sets.items()}
    except ImportError:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([args.torch_python, __file__, "--only-torch", out.name, "--torch-threads",
                            str(args.torch_threads)] + (["--quick"] if args.quick else []), check=True)
            r["pytorch_grad_cam"] = json.loads(Path(out.name).read_text())
    r["load_end"] = loadavg()
    lines = [f"# cam-runtime vs OpenVINO XAI and pytorch-grad-cam ({r['created']})", "",
             f"EfficientNet-Lite1 (ImageNet weights, 240×240 NCHW). Machine: {r['machine']['cpu']}, "
             f"{r['machine']['cores_usable']} cores, flags {', '.join(r['cpu_flags'])}; OpenVINO {r['openvino']}; "
             f"load {r['load_start']:.2f} → {r['load_end']:.2f}. `{r['command']}`", "",
             "| pipeline (decode → overlay, per image, median ms) | chelsea 451×300 | 8 mixed photos | "
             "vs XAI same precision (chelsea) |", "|---|---|---|---|"]
    for pname in pipelines:
        precision = "bf16" if "bf16" in pname else "fp32"
        xai_ms = r["sets"]["chelsea"][f"OpenVINO XAI reciprocam, OpenVINO {precision}"]
        lines.append(f"| {pname} | {r['sets']['chelsea'][pname]:.2f} | {r['sets']['mixed'][pname]:.2f} | "
                     f"{r['sets']['chelsea'][pname] / xai_ms:.2f}x |")
    g = r["pytorch_grad_cam"]
    lines.append(f"| pytorch-grad-cam GradCAM, torch CPU fp32, {g['chelsea']['threads']} thread(s) | "
                 f"{g['chelsea']['ms']:.2f} | "
                 f"{g['mixed']['ms']:.2f} | — |")
    text = "\n".join(lines) + "\n"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"peer-{stamp}.json").write_text(json.dumps(r, indent=2, default=float) + "\n")
    (RESULTS / f"peer-{stamp}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
