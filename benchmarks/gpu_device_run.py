"""Everything the lent GPU machine runs in one call (issue 18): build a model there, then every GPU check.

    python benchmarks/gpu_device_run.py --out DIR               # on the GPU machine (recipe: benchmarks/README.md)
    python benchmarks/gpu_device_run.py --device cpu --arch tiny --small --out /tmp/x   # proof run on a CPU

The GPU machine has torch and torchvision but cannot receive a ~100 MB fp32 ResNet50 ONNX next to the
onnxruntime-gpu relay, so the model is built there: torchvision's ResNet50 with random weights (batch-norm
statistics re-estimated on the fixture images, so activations stay in fp16 range), ``torch.onnx.export``,
then ``camr import`` (``export.onnx_import.import_onnx``). Then, each step in its own try/except so one
failure keeps the others:

1. ``gpu_check.py`` on that folder (CUDA tests, CPU/GPU agreement, run() vs IOBinding, fp32 vs fp16);
2. node placement from onnxruntime's profile (every node on CUDA? TopK?) and the optimised graph's layout
   (how many Conv nodes became NHWC with ``prefer_nhwc``), per precision;
3. fp16 batch-256 bare IOBinding with ``prefer_nhwc`` 1 vs 0;
4. CUDA graphs at batch 1 (``enable_cuda_graph``) on the device-map graph, k fed as an input and k fixed;
5. pytorch-grad-cam ``GradCAM`` on the same torch model and card (host batch → maps in host memory).

A JSON and a markdown table go to ``--out``; the table is printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

from cam_runtime import CamEngine  # noqa: E402
from cam_runtime import device_maps as dm  # noqa: E402
from cam_runtime.providers import (  # noqa: E402
    CUDA,
    cuda_provider_options,
    import_onnxruntime,
    preload_cuda_libraries,
    resolve_providers,
)

STEPS = ("check", "placement", "nhwc", "tf32", "graphs", "gradcam", "overlap")
"""The checks after the model is built (``--only`` picks some)."""
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def step(results: dict[str, Any], name: str, out: Path, call: Callable[[], Any]) -> Any:
    """Run one check, keep its result or its error, and save everything so far (a timeout keeps the rest)."""
    start = time.perf_counter()
    print(f"\n=== {name}", flush=True)
    try:
        value = call()
        results[name] = value
    except Exception as exc:  # every check is independent: report and go on
        traceback.print_exc()
        value = None
        results[name] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:500]}"}
    results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)
    (out / "gpu-device-run.json").write_text(json.dumps(results, indent=2, default=str))
    return value


def torch_model(arch: str) -> Any:
    """ResNet50 (torchvision, random weights) or a tiny CNN for the CPU proof run; eval mode, seeded."""
    import torch

    torch.manual_seed(0)
    if arch == "resnet50":
        from torchvision.models import resnet50

        return resnet50(weights=None)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def fixture_tensor(size: int, count: int) -> np.ndarray:
    """The fixture images as a torchvision-normalised NCHW batch (for batch-norm statistics)."""
    import cv2

    files = sorted(gpu_check.SHAPES_IMAGES.glob("*.png"))[:count]
    images = [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (size, size), interpolation=cv2.INTER_AREA) for f in files]
    batch = (np.stack(images).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def build_model(arch: str, size: int, work: Path) -> tuple[Any, Path]:
    """The torch model (BN statistics re-estimated, eval) and its imported model folder."""
    import torch

    from export.onnx_import import import_onnx

    model = torch_model(arch)
    batch = torch.from_numpy(fixture_tensor(size, 64))
    for module in model.modules():  # cumulative averages over the fixture batches
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for chunk in batch.split(16):
            model(chunk)
    model.eval()
    onnx_path = work / f"{arch}.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(onnx_path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      opset_version=17, dynamo=False)
    folder = import_onnx(onnx_path, work / f"{arch}-torch", preset="torchvision", size=size)
    return model, folder


def extended_session(folder: Path, *, device: str, options: dict[str, Any] | None = None, fixed_k: int | None = None,
                     profile: Path | None = None, optimized: Path | None = None) -> Any:
    """A session on the device-map graph with extra CUDA options, profiling or the optimised graph saved."""
    import onnx
    from onnx import numpy_helper

    ort = import_onnxruntime()
    engine_folder = CamEngine.load(folder, device="cpu", warmup=False).folder
    model_bytes = dm.extend_model(engine_folder.model_path, engine_folder.manifest,
                                  engine_folder.linear_weights("device maps"))
    if fixed_k is not None:  # k as a constant: no host-side input left in the graph
        model = onnx.load_from_string(model_bytes)
        kept = [i for i in model.graph.input if i.name != dm.TOP_K]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.graph.initializer.append(numpy_helper.from_array(dm.top_k_feed(fixed_k), dm.TOP_K))
        model_bytes = model.SerializeToString()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if profile is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile)
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    providers = resolve_providers(device, cuda_provider_options(options))
    if device == "cuda":
        preload_cuda_libraries(ort)
    return ort.InferenceSession(model_bytes, sess_options=so, providers=providers)


def feeds_for(session: Any, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Input feeds for an extended session (k = 1 where k is an input)."""
    names = {i.name for i in session.get_inputs()}
    feeds = {next(n for n in names if n != dm.TOP_K): batch}
    if dm.TOP_K in names:
        feeds[dm.TOP_K] = dm.top_k_feed(1)
    return feeds


def placement(folder: Path, device: str, work: Path, tag: str) -> dict[str, Any]:
    """Which provider ran each node (profile), how many Conv nodes are NHWC and how many Transposes (graph)."""
    import onnx

    optimized = work / f"optimized-{tag}.onnx"
    session = extended_session(folder, device=device, profile=work / f"profile-{tag}", optimized=optimized)
    shape = [d if isinstance(d, int) else 4 for d in session.get_inputs()[0].shape]
    batch = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for _ in range(2):
        session.run(None, feeds_for(session, batch))
    events = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[str, tuple[str, str]] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args:
            nodes[event["name"].removesuffix("_kernel_time").removesuffix("_fence_before")
                  .removesuffix("_fence_after")] = (args.get("op_name", "?"), args["provider"])
    by_provider: dict[str, int] = {}
    for _op, provider in nodes.values():
        by_provider[provider] = by_provider.get(provider, 0) + 1
    graph = onnx.load(str(optimized), load_external_data=False).graph
    convs = [n for n in graph.node if n.op_type in ("Conv", "FusedConv")]
    return {
        "providers": session.get_providers(), "nodes_by_provider": by_provider,
        "not_on_first_provider": sorted(f"{name} ({op}, {provider})" for name, (op, provider) in nodes.items()
                                        if provider != session.get_providers()[0])[:30],
        "topk_provider": sorted({p for op, p in nodes.values() if op == "TopK"}),
        "memcpy_nodes": sorted(f"{n.op_type} {list(n.input)} -> {list(n.output)} (into "
                               f"{[c.op_type for c in graph.node if set(c.input) & set(n.output)]})"
                               for n in graph.node if n.op_type.startswith("Memcpy")),
        "conv_nodes": len(convs), "conv_nodes_nhwc": sum(1 for n in convs if "nhwc" in n.domain.lower()),
        "transpose_nodes": sum(1 for n in graph.node if n.op_type == "Transpose"),
    }


def nhwc_comparison(folder: Path, device: str, size: int, repeats: int) -> dict[str, Any]:
    """Bare IOBinding throughput of one folder with prefer_nhwc 1 and 0 (same card, same run)."""
    out: dict[str, Any] = {"batch": size}
    for flag in ("1", "0"):
        engine = CamEngine.load(folder, device=device, device_maps=True, cuda_options={"prefer_nhwc": flag})
        batch = np.random.default_rng(0).normal(size=(size, *engine._input_shape())).astype(np.float32)
        seconds = gpu_check.timed(gpu_check.bare_iobinding(engine, batch), repeats)
        out[f"prefer_nhwc={flag} images_per_s"] = round(size / seconds, 1)
        del engine
        gc.collect()
    return out


def tf32_comparison(folder: Path, device: str, size: int, repeats: int) -> dict[str, Any]:
    """fp32 with use_tf32 1 vs 0: bare IOBinding throughput and map agreement with the CPU (same run)."""
    cpu = CamEngine.load(folder, device="cpu")
    sample = gpu_check.sample_batch(cpu, 16)
    out: dict[str, Any] = {"batch": size}
    for flag in ("1", "0"):
        engine = CamEngine.load(folder, device=device, device_maps=True, cuda_options={"use_tf32": flag})
        agree = gpu_check.agreement(cpu, engine, sample)
        batch = np.random.default_rng(0).normal(size=(size, *engine._input_shape())).astype(np.float32)
        seconds = gpu_check.timed(gpu_check.bare_iobinding(engine, batch), repeats)
        out[f"use_tf32={flag}"] = {"images_per_s": round(size / seconds, 1),
                                   "maps_pearson_min_image": agree["maps_pearson_min_image"],
                                   "probabilities_max_abs": agree["probabilities_max_abs"]}
        del engine
        gc.collect()
    return out


def overlap(folder: Path, device: str, size: int, repeats: int) -> dict[str, Any]:
    """e2e device-map throughput with 1-3 batches in flight, run() and IOBinding, do_copy_in_default_stream 1/0."""
    from concurrent.futures import ThreadPoolExecutor

    out: dict[str, Any] = {"batch": size}
    for flag in ("1", "0"):
        engine = CamEngine.load(folder, device=device, device_maps=True,
                                cuda_options={"do_copy_in_default_stream": flag})
        batch = np.random.default_rng(0).normal(size=(size, *engine._input_shape())).astype(np.float32)
        bare = gpu_check.timed(gpu_check.bare_iobinding(engine, batch), repeats)
        out[f"copy_in_default_stream={flag} bare iobind"] = round(size / bare, 1)
        for binding in (False, True):
            engine.io_binding = binding
            for threads in (1, 2, 3):
                with ThreadPoolExecutor(threads) as pool:
                    def call(n: int = threads, p: Any = pool, run: Any = engine.run_device_maps,
                             x: np.ndarray = batch) -> Any:
                        return [f.result() for f in [p.submit(run, x, 1) for _ in range(n)]]

                    seconds = gpu_check.timed(call, repeats) / threads
                key = f"copy_in_default_stream={flag} {'iobind' if binding else 'run'} {threads} in flight"
                out[key] = round(size / seconds, 1)
                print(f"  {key}: {out[key]} img/s", flush=True)
        engine = None
        gc.collect()
    return out


def ort_dtype(kind: str) -> Any:
    """NumPy dtype of an onnxruntime type string."""
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}[kind]


def prebound(session: Any, batch: np.ndarray, device: str, shapes: dict[str, tuple[int, ...]]) -> Callable[[], Any]:
    """Batch-1 latency closure with every buffer bound once (what CUDA graph replay needs): upload, run, fetch."""
    ort = import_onnxruntime()
    binding = session.io_binding()
    names = {i.name for i in session.get_inputs()}
    image = ort.OrtValue.ortvalue_from_numpy(batch, device, 0)
    binding.bind_ortvalue_input(next(n for n in names if n != dm.TOP_K), image)
    if dm.TOP_K in names:
        binding.bind_cpu_input(dm.TOP_K, dm.top_k_feed(1))
    outputs = {}
    for output in session.get_outputs():
        if output.name in shapes:
            value = ort.OrtValue.ortvalue_from_shape_and_type(shapes[output.name], ort_dtype(output.type), device, 0)
            binding.bind_ortvalue_output(output.name, value)
            outputs[output.name] = value
        else:
            binding.bind_output(output.name, device, 0)

    def call() -> Any:
        image.update_inplace(batch)
        session.run_with_iobinding(binding)
        return {name: value.numpy() for name, value in outputs.items() if name in (dm.MAPS, dm.CLASSES)}

    return call


def cuda_graphs(folder: Path, device: str, repeats: int) -> dict[str, Any]:
    """Batch-1 latency with and without enable_cuda_graph on the device-map graph (k input, then k fixed)."""
    reference = CamEngine.load(folder, device=device, device_maps=True)
    batch = np.random.default_rng(1).normal(size=(1, *reference._input_shape())).astype(np.float32)
    expected = reference.run_device_maps(batch, 1)
    probs_name = reference.manifest.outputs.probabilities
    shapes = {probs_name: expected.probabilities.shape, dm.MAPS: expected.maps.shape, dm.CLASSES: (1, 1),
              dm.SCORES: (1, 1), reference.manifest.outputs.features: reference.run(batch)[1].shape}
    if reference.manifest.outputs.features_layout == "NCHW":
        n, h, w, c = shapes[reference.manifest.outputs.features]
        shapes[reference.manifest.outputs.features] = (n, c, h, w)
    out: dict[str, Any] = {"engine run_device_maps ms": round(gpu_check.timed(
        lambda: reference.run_device_maps(batch, 1), repeats * 4) * 1e3, 3)}
    for label, fixed_k in (("k input", None), ("k fixed", 1)):
        for graph in ("0", "1"):
            key = f"{label}, enable_cuda_graph={graph}"
            try:
                options = {"enable_cuda_graph": graph} if device == "cuda" else None
                session = extended_session(folder, device=device, options=options, fixed_k=fixed_k)
                call = prebound(session, batch, device, shapes)
                got = call()
                seconds = gpu_check.timed(call, repeats * 4)
                got = call()
                out[key] = {"ms": round(seconds * 1e3, 3),
                            "maps_max_abs_diff": float(np.abs(got[dm.MAPS] - expected.maps).max()),
                            "same_class": bool((got[dm.CLASSES] == expected.classes).all())}
                del session
            except Exception as exc:  # e.g. onnxruntime refusing CUDA graphs for this graph
                out[key] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
    return out


def import_grad_cam() -> Any:
    """pytorch-grad-cam, with the tests' torchvision stand-in where torchvision is missing (CPU proof run)."""
    try:
        import pytorch_grad_cam
    except ImportError:
        sys.path.insert(0, str(ROOT / "tests"))
        from torch_reference import import_pytorch_grad_cam

        pytorch_grad_cam = import_pytorch_grad_cam()
    return pytorch_grad_cam


def grad_cam_throughput(model: Any, arch: str, device: str, sizes: list[int], repeats: int) -> dict[str, Any]:
    """pytorch-grad-cam GradCAM (its defaults: fp32, top-1 target, maps resized to the input) per batch size."""
    import torch

    grad_cam = import_grad_cam()
    torch_device = "cuda" if device == "cuda" else "cpu"
    torch.backends.cudnn.benchmark = True
    model = model.to(torch_device).eval()
    layer = model.layer4[-1] if arch == "resnet50" else model[3]
    cam = grad_cam.GradCAM(model=model, target_layers=[layer])
    out: dict[str, Any] = {"torch": torch.__version__, "grad_cam_layer": "layer4[-1]" if arch == "resnet50" else "[3]"}
    rng = np.random.default_rng(0)
    for size in sizes:
        host = torch.from_numpy(rng.normal(size=(size, 3, 224 if arch == "resnet50" else 64,
                                                 224 if arch == "resnet50" else 64)).astype(np.float32))

        def call(batch: Any = host) -> Any:
            maps = cam(input_tensor=batch.to(torch_device), targets=None)
            if torch_device == "cuda":
                torch.cuda.synchronize()
            return maps

        seconds = gpu_check.timed(call, repeats, warmup=2)
        out[f"batch {size} images_per_s"] = round(size / seconds, 1)
    return out


def summary(results: dict[str, Any]) -> str:
    """Markdown: machine, targets, and the extra checks in a few lines."""
    machine = results.get("machine", {})
    check = results.get("gpu_check", {}) or {}
    lines = [f"GPU device run: {machine.get('gpu')}, onnxruntime {machine.get('onnxruntime')}, "
             f"torch {machine.get('torch')}, model {results.get('model')}", ""]
    rows = check.get("rows", []) if isinstance(check, dict) else []
    largest = max((r["batch"] for r in rows), default=None)

    def rate(precision: str, mode: str, batch: int | None = largest) -> float | None:
        row = next((r for r in rows if (r["precision"], r["mode"], r["batch"]) == (precision, mode, batch)), None)
        return None if row is None else float(row["images_per_s"] if batch != 1 else row["latency_ms"])

    lines += ["| check | value | target |", "|---|---|---|"]
    for precision in ("fp16", "fp32"):
        bare = rate(precision, "bare iobind")
        for mode in ("e2e dev-maps iobind", gpu_check.TWO_THREADS):
            e2e = rate(precision, mode)
            if e2e and bare:
                lines.append(f"| {precision} batch {largest}: {mode} / bare iobind | {e2e:.0f} / {bare:.0f} "
                             f"img/s = {e2e / bare:.3f} | ≥ 0.8 |")
    grad = results.get("grad_cam", {}) or {}
    best = max((v for k, v in grad.items() if k.endswith("images_per_s")), default=None)
    for mode in ("e2e dev-maps iobind", gpu_check.TWO_THREADS):
        e2e16 = rate("fp16", mode)
        if best and e2e16:
            lines.append(f"| fp16 {mode} / pytorch-grad-cam GradCAM (best batch, fp32, same card) | {e2e16:.0f} / "
                         f"{best:.0f} img/s = {e2e16 / best:.1f}× | ≥ 10× |")
    for name, agree in (check.get("agreement") or {}).items():
        lines.append(f"| maps Pearson {name} (min per image) | {agree['maps_pearson_min_image']:.6f} | "
                     f"{'≥ 0.999' if name.startswith('fp32') else 'reported'} |")
    tests = check.get("tests") or {}
    lines.append(f"| CUDA tests | {tests.get('summary')} | all pass |")
    lines += [f"| test failure | {line[:200]} | |" for line in tests.get("failures") or []]
    for tag in ("fp32", "fp16"):
        place = results.get(f"placement {tag}") or {}
        if "nodes_by_provider" in place:
            lines.append(f"| {tag} nodes by provider / TopK on / Memcpy nodes | {place['nodes_by_provider']} / "
                         f"{place['topk_provider']} / {len(place['memcpy_nodes'])} | all on CUDA |")
            lines.append(f"| {tag} Conv nodes NHWC (prefer_nhwc=1) / Transposes | {place['conv_nodes_nhwc']} of "
                         f"{place['conv_nodes']} / {place['transpose_nodes']} | NHWC |")
    for key, value in (results.get("overlap fp16") or {}).items():
        if key != "batch" and not isinstance(value, dict):
            lines.append(f"| fp16 e2e batch {results['overlap fp16']['batch']}, {key} | {value:.0f} img/s | |")
    tf32 = results.get("use_tf32 fp32") or {}
    for flag in ("1", "0"):
        if f"use_tf32={flag}" in tf32:
            row = tf32[f"use_tf32={flag}"]
            lines.append(f"| fp32 use_tf32={flag}: bare iobind batch {tf32['batch']} / maps Pearson min | "
                         f"{row['images_per_s']:.0f} img/s / {row['maps_pearson_min_image']:.6f} | |")
    nhwc = results.get("prefer_nhwc fp16") or {}
    if "prefer_nhwc=1 images_per_s" in nhwc:
        lines.append(f"| fp16 bare iobind batch {nhwc['batch']}, prefer_nhwc 1 vs 0 | "
                     f"{nhwc['prefer_nhwc=1 images_per_s']:.0f} vs {nhwc['prefer_nhwc=0 images_per_s']:.0f} img/s | |")
    for tag in ("fp16", "fp32"):
        graphs = results.get(f"cuda graphs {tag}") or {}
        for key, value in graphs.items():
            shown = value if not isinstance(value, dict) else (
                value.get("error") or f"{value['ms']:.3f} ms (maps diff {value['maps_max_abs_diff']:.1e})")
            lines.append(f"| {tag} batch 1 {key} | {shown} | |")
    if rows:
        lines += ["", gpu_check.table(check)]
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    lines += [""] + [f"ERROR {k}: {v}" for k, v in errors.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Every check in turn; JSON + markdown to --out; the summary printed last."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--arch", choices=("resnet50", "tiny"), default="resnet50")
    parser.add_argument("--small", action="store_true", help="small sizes for a CPU proof run")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the pytest CUDA subset")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu-device-run.json/.md")
    parser.add_argument("--only", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)} (the model is always built)")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(STEPS):
        parser.error(f"--only: unknown steps {sorted(only - set(STEPS))}; choose from {','.join(STEPS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    size = 224 if args.arch == "resnet50" else 64
    batches = "1,8" if args.small else "1,64,256"
    repeats = 3 if args.small else 10
    big = 8 if args.small else 256
    results: dict[str, Any] = {"model": f"{args.arch} (random weights, BN statistics from the fixture images), "
                                        f"{size}×{size}, torch → ONNX → camr import"}
    ort = import_onnxruntime()
    if args.device == "cuda":
        preload_cuda_libraries(ort)

    def machine() -> dict[str, Any]:
        import torch

        info = gpu_check.machine_info(args.device)
        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.is_available()
        return info

    step(results, "machine", args.out, machine)
    print(results["machine"], flush=True)
    if args.device == "cuda" and CUDA not in ort.get_available_providers():
        print("CUDAExecutionProvider unavailable: stopping", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-run-") as tmp:
        work = Path(tmp)
        nets: list[Any] = []

        def build() -> dict[str, str]:
            net, path = build_model(args.arch, size, work)
            nets.append(net)
            return {"folder": str(path)}

        built = step(results, "build", args.out, build)
        if built is None:
            print(summary(results))
            return 1
        torch_net, folder = nets[0], Path(built["folder"])

        def fp16() -> dict[str, Any]:
            cpu = CamEngine.load(folder, device="cpu")
            return {"folder": str(gpu_check.fp16_model(cpu, None, args.device, work))}

        half = step(results, "fp16 conversion", args.out, fp16)
        fp16_folder = Path(half["folder"]) if half else None
        check_args = ["--device", args.device, "--model", str(folder), "--batches", batches,
                      "--repeats", str(repeats), "--out", str(args.out / "gpu-check.json")]
        if fp16_folder is not None:
            check_args += ["--fp16-model", str(fp16_folder)]
        if args.skip_tests:
            check_args.append("--skip-tests")

        def run_check() -> dict[str, Any]:
            code = gpu_check.main(check_args)
            data = json.loads((args.out / "gpu-check.json").read_text())
            data["exit_code"] = code
            return dict(data)

        if "check" in only:
            step(results, "gpu_check", args.out, run_check)
        precisions = {"fp32": folder, **({"fp16": fp16_folder} if fp16_folder else {})}
        for tag, path in precisions.items() if "placement" in only else ():
            step(results, f"placement {tag}", args.out, lambda p=path, t=tag: placement(p, args.device, work, t))
        if fp16_folder is not None and "nhwc" in only:
            step(results, "prefer_nhwc fp16", args.out,
                 lambda: nhwc_comparison(fp16_folder, args.device, big, repeats))
        if fp16_folder is not None and "overlap" in only:
            step(results, "overlap fp16", args.out, lambda: overlap(fp16_folder, args.device, big, repeats))
        if "tf32" in only:
            step(results, "use_tf32 fp32", args.out, lambda: tf32_comparison(folder, args.device, big, repeats))
        for tag, path in precisions.items() if "graphs" in only else ():
            step(results, f"cuda graphs {tag}", args.out, lambda p=path: cuda_graphs(p, args.device, repeats))
        gc.collect()
        sizes = [4, 8] if args.small else [16, 32, 64, 128]
        if "gradcam" in only:
            step(results, "grad_cam", args.out,
                 lambda: grad_cam_throughput(torch_net, args.arch, args.device, sizes, 3 if args.small else 5))
    text = summary(results)
    (args.out / "gpu-device-run.md").write_text(text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
