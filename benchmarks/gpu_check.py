"""One-command device check (issue 8): CUDA tests, CPU/GPU agreement, run() vs IOBinding, fp32 vs fp16.

    python benchmarks/gpu_check.py                       # on the GPU machine: --device cuda, batches 1,64,256
    python benchmarks/gpu_check.py --device cpu --small  # proves the script end to end on a CPU (CPU numbers only)

Steps: (1) the pytest subset marked ``cuda`` (tests/test_device_maps.py, tests/test_iobinding.py); (2) agreement
of probabilities and top-1 maps between the fp32 model on the CPU (NumPy maps, the reference) and on the device
(device maps), Pearson ≥ 0.999 required for fp32, fp16 reported; (3) timings for fp32 and fp16 at each batch size:

* bare run       ``session.run`` fetching only the probabilities (input uploaded from host memory every run)
* bare iobind    ``run_with_iobinding`` with the input already on the device and outputs left there (pure model)
* e2e *          a preprocessed batch in host memory → top-1 maps [N, 1, h, w] and probabilities in host memory:
                 ``dev-maps`` = CAM computed in the graph (engine.run_device_maps), ``numpy-maps`` = features
                 copied to the host and the CAM computed with NumPy (engine.run + methods.CAM), each through
                 ``run()`` or IOBinding

Batch 1 is reported as median latency (ms), larger batches as throughput (images/s of the median run).
Results: ``--out`` (default ``benchmarks/results/gpu-check-<stamp>.json``); the table is printed last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cam_runtime import CamEngine  # noqa: E402
from cam_runtime.methods import CAM, HeadInputs  # noqa: E402
from cam_runtime.providers import CUDA, available_providers, import_onnxruntime  # noqa: E402

FP32 = ROOT / "models" / "resnet50-random"
FP16 = ROOT / "models" / "resnet50-random-fp16"
SHAPES_IMAGES = ROOT / "models" / "fixtures" / "shapes-test" / "images"
CUDA_TESTS = ["tests/test_device_maps.py", "tests/test_iobinding.py"]
MIN_PEARSON_FP32 = 0.999
TWO_THREADS = "e2e dev-maps iobind 2 threads"
"""Two batches in flight through the engine at once (upload of one overlapping the other's compute)."""
GRADCAM_ANCHOR = 550.0
"""pytorch-grad-cam GradCAM at batch 32 on an H100, images/s (issue 8's anchor; not measured by this script)."""


def machine_info(device: str) -> dict[str, Any]:
    """Card, driver, library versions and providers."""
    ort = import_onnxruntime()
    info: dict[str, Any] = {"python": platform.python_version(), "onnxruntime": ort.__version__,
                            "numpy": np.__version__, "providers": available_providers(), "device": device}
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20, check=True)
        info["gpu"] = query.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    cpu = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    info["cpu"] = cpu[0] if cpu else platform.processor()
    return info


def run_cuda_tests(device: str) -> dict[str, Any]:
    """pytest -m cuda on the two files that hold the CUDA tests; on a CPU they must all skip (with a reason)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rfEs", "--tb=line",
               *CUDA_TESTS]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": "timed out after 240 s"}
    output = done.stdout + done.stderr
    if "No module named pytest" in output:
        return {"ok": False, "summary": "pytest is not installed here (see benchmarks/README.md)"}
    last = output.strip().splitlines()[-1] if output.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", last)}
    print(output[-3000:])
    ran = counts.get("passed", 0) > 0 if device == "cuda" else counts.get("skipped", 0) > 0
    failures = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR", "E "))][:40]
    return {"ok": done.returncode == 0 and ran, "summary": last.strip("= "), "failures": failures,
            "counts": counts, "seconds": round(time.perf_counter() - start, 1)}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays, flattened."""
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def sample_batch(engine: CamEngine, count: int) -> np.ndarray:
    """Preprocessed fixture images (real pictures: shapes on backgrounds), resized to the model's input."""
    files = sorted(SHAPES_IMAGES.glob("*.png"))[:count]
    return np.stack([engine.preprocessor.tensor(engine.load_image(f).bgr) for f in files])


def agreement(reference: CamEngine, candidate: CamEngine, batch: np.ndarray) -> dict[str, float]:
    """Candidate (device maps, on the device) against the reference's NumPy path on the CPU."""
    probs, features = reference.run(batch)
    targets = reference.resolve_targets(probs, None, 1)
    maps = CAM().maps(HeadInputs(features, probs, reference.folder.weights, targets))
    device = candidate.run_device_maps(batch, 1)
    per_image = [pearson(device.maps[i], maps[i]) for i in range(len(batch))]
    return {"probabilities_pearson": pearson(device.probabilities, probs),
            "probabilities_max_abs": float(np.abs(device.probabilities - probs).max()),
            "top1_agreement": float(np.mean(device.classes[:, 0] == targets[:, 0])),
            "maps_pearson": pearson(device.maps, maps), "maps_pearson_min_image": float(min(per_image))}


def timed(call: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``call`` after warm-up runs."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bare_iobinding(engine: CamEngine, batch: np.ndarray) -> Callable[[], object]:
    """A closure running the model with input and outputs on the session's device (nothing crosses to the host)."""
    ort = import_onnxruntime()
    device, device_id = engine._binding_device
    binding = engine.session.io_binding()
    value = ort.OrtValue.ortvalue_from_numpy(batch, device, device_id)
    binding.bind_ortvalue_input(engine.manifest.input.name, value)
    if engine.device_maps:
        from cam_runtime.device_maps import TOP_K, top_k_feed

        binding.bind_cpu_input(TOP_K, top_k_feed(1))
    binding.bind_output(engine.manifest.outputs.probabilities, device, device_id)
    binding.bind_output(engine.manifest.outputs.features, device, device_id)

    def call() -> None:
        engine.session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return call


def modes(engine: CamEngine, batch: np.ndarray) -> dict[str, Callable[[], object]]:
    """Every timed variant for one engine and batch."""
    names = [engine.manifest.outputs.probabilities]
    feeds = {engine.manifest.input.name: batch}
    if engine.device_maps:
        from cam_runtime.device_maps import TOP_K, top_k_feed

        feeds[TOP_K] = top_k_feed(1)

    def with_binding(flag: bool, call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            engine.io_binding = flag
            return call()
        return run

    def numpy_maps() -> object:
        probs, features = engine.run(batch)
        targets = engine.resolve_targets(probs, None, 1)
        return CAM().maps(HeadInputs(features, probs, engine.folder.weights, targets))

    pool = ThreadPoolExecutor(2)

    def two_threads() -> object:
        # Two batches in flight, as a prefetching pipeline has: one uploads while the other computes.
        engine.io_binding = True
        return [f.result() for f in [pool.submit(engine.run_device_maps, batch, 1) for _ in range(2)]]

    return {
        "bare run": lambda: engine.session.run(names, feeds),
        "bare iobind": bare_iobinding(engine, batch),
        "e2e dev-maps run": with_binding(False, lambda: engine.run_device_maps(batch, 1)),
        "e2e dev-maps iobind": with_binding(True, lambda: engine.run_device_maps(batch, 1)),
        "e2e numpy-maps run": with_binding(False, numpy_maps),
        "e2e numpy-maps iobind": with_binding(True, numpy_maps),
        TWO_THREADS: two_threads,
    }


def benchmark(engine: CamEngine, precision: str, batches: list[int], repeats: int) -> list[dict[str, Any]]:
    """Rows of (precision, mode, batch, median seconds, ms or images/s)."""
    rows = []
    rng = np.random.default_rng(0)
    for size in batches:
        batch = rng.normal(size=(size, *engine._input_shape())).astype(np.float32)
        for mode, call in modes(engine, batch).items():
            seconds = timed(call, repeats if size > 1 else repeats * 4)
            if mode == TWO_THREADS:  # two batches per call: the time per batch
                seconds /= 2
            rows.append({"precision": precision, "mode": mode, "batch": size, "median_s": seconds,
                         "latency_ms": seconds * 1e3, "images_per_s": size / seconds})
            print(f"  {precision} {mode:22s} batch {size:4d}: {seconds * 1e3:9.2f} ms  {size / seconds:9.1f} img/s",
                  flush=True)
        engine.io_binding = False
    return rows


def fp16_model(fp32: CamEngine, given: Path | None, device: str, work: Path) -> Path:
    """The fp16 folder given, the default one if present, else one converted now (fidelity reported, not enforced)."""
    if given is not None:
        return given
    if FP16.is_dir():
        return FP16
    from cam_runtime.derive import fp16_folder

    output = work / "fp16"
    fp16_folder(fp32, output, calibration=SHAPES_IMAGES, device=device, max_images=8, accept_low_fidelity=True,
                timing_runs=2, log=print)
    return output


def table(results: dict[str, Any]) -> str:
    """Markdown summary: checks, then one line per (precision, mode) with a column per batch size."""
    lines = [f"device check on {results['machine'].get('gpu') or results['machine']['cpu']} "
             f"({results['device']}, onnxruntime {results['machine']['onnxruntime']})", ""]
    tests = results["tests"]
    lines.append(f"CUDA tests: {'ok' if tests.get('ok') else 'NOT OK'} ({tests.get('summary')})")
    for name, agree in results["agreement"].items():
        lines.append(f"agreement {name}: probabilities r={agree['probabilities_pearson']:.6f}, maps r="
                     f"{agree['maps_pearson']:.6f} (min per image {agree['maps_pearson_min_image']:.6f}), "
                     f"top-1 {agree['top1_agreement']:.3f}")
    batches = sorted({row["batch"] for row in results["rows"]})
    header = "| precision | mode | " + " | ".join(
        "batch 1 ms" if b == 1 else f"batch {b} img/s" for b in batches) + " |"
    lines += ["", header, "|" + "---|" * (2 + len(batches))]
    keys = dict.fromkeys((row["precision"], row["mode"]) for row in results["rows"])
    for precision, mode in keys:
        cells = []
        for b in batches:
            row = next((r for r in results["rows"] if (r["precision"], r["mode"], r["batch"]) == (precision, mode, b)),
                       None)
            cells.append("" if row is None else f"{row['latency_ms']:.2f}" if b == 1 else f"{row['images_per_s']:.0f}")
        lines.append(f"| {precision} | {mode} | " + " | ".join(cells) + " |")
    lines += [""] + [f"target {name}: {value}" for name, value in results["targets"].items()]
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]], agreement_fp32: dict[str, float] | None, device: str) -> dict[str, str]:
    """Issue 8's targets at the largest batch, computed from this run."""
    largest = max(row["batch"] for row in rows)

    def rate(precision: str, mode: str) -> float | None:
        row = next((r for r in rows if (r["precision"], r["mode"], r["batch"]) == (precision, mode, largest)), None)
        return None if row is None else float(row["images_per_s"])

    out: dict[str, str] = {}
    e2e, bare = rate("fp16", "e2e dev-maps iobind"), rate("fp16", "bare iobind")
    if e2e and bare:
        verdict = "met" if e2e >= 0.8 * bare else "missed"
        out[f"fp16 e2e/bare iobind at batch {largest} >= 0.8"] = f"{e2e / bare:.3f} ({verdict})"
    piped = rate("fp16", TWO_THREADS)
    if piped and bare:
        verdict = "met" if piped >= 0.8 * bare else "missed"
        out[f"fp16 e2e 2 threads/bare iobind at batch {largest} >= 0.8"] = f"{piped / bare:.3f} ({verdict})"
    if e2e:
        ratio = e2e / GRADCAM_ANCHOR
        note = "" if device == "cuda" else ", CPU run: not comparable"
        out["fp16 e2e >= 10x pytorch-grad-cam anchor (550 img/s, H100)"] = (
            f"{ratio:.1f}x ({'met' if ratio >= 10 else 'missed'}{note})")
    if agreement_fp32:
        r = agreement_fp32["maps_pearson_min_image"]
        out[f"fp32 maps Pearson >= {MIN_PEARSON_FP32} (min per image)"] = (
            f"{r:.6f} ({'met' if r >= MIN_PEARSON_FP32 else 'missed'})")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every check, write JSON, print the table last; non-zero exit when a check fails."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--model", type=Path, default=FP32, help="fp32 model folder (default models/resnet50-random)")
    parser.add_argument("--fp16-model", type=Path, default=None,
                        help="fp16 folder (default models/resnet50-random-fp16, else converted now)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,64,256; --small 1,8)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per cell (default 10; --small 3)")
    parser.add_argument("--small", action="store_true", help="small sizes for a CPU proof run")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the pytest CUDA subset")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/gpu-check-…)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in (args.batches or ("1,8" if args.small else "1,64,256")).split(",")]
    repeats = args.repeats or (3 if args.small else 10)
    if args.device == "cuda" and CUDA not in available_providers():
        print(f"CUDAExecutionProvider unavailable (providers: {available_providers()}); use --device cpu "
              "or install onnxruntime-gpu (benchmarks/README.md)", file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu-check-{stamp}.json"
    results: dict[str, Any] = {"stamp": stamp, "device": args.device, "machine": machine_info(args.device),
                               "batches": batches, "repeats": repeats}
    skipped = {"ok": None, "summary": "skipped (--skip-tests)"}
    results["tests"] = skipped if args.skip_tests else run_cuda_tests(args.device)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        cpu_fp32 = CamEngine.load(args.model, device="cpu", threads=args.threads)
        folders = {"fp32": args.model, "fp16": fp16_model(cpu_fp32, args.fp16_model, args.device, Path(work))}
        sample = sample_batch(cpu_fp32, 16)
        results["agreement"], results["rows"] = {}, []
        for precision, folder in folders.items():
            print(f"{precision}: loading {folder} on {args.device}", flush=True)
            engine = CamEngine.load(folder, device=args.device, threads=args.threads, device_maps=True)
            results["agreement"][f"{precision} {args.device} vs fp32 cpu"] = agreement(cpu_fp32, engine, sample)
            results["rows"] += benchmark(engine, precision, batches, repeats)
            del engine
    fp32_agreement = results["agreement"].get(f"fp32 {args.device} vs fp32 cpu")
    results["targets"] = targets(results["rows"], fp32_agreement, args.device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}\n")
    print(table(results))
    failed = results["tests"].get("ok") is False or (
        fp32_agreement is not None and fp32_agreement["maps_pearson_min_image"] < MIN_PEARSON_FP32)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
