"""OpenVINO paths against onnxruntime's CPU provider: same outputs? how fast? bf16 fidelity and speed.

Run it where both OpenVINO paths are installed (the ``openvino`` extra: onnxruntime-openvino, which replaces
onnxruntime, plus the openvino package), e.g.::

    python3 -m venv /work/venv-ov && /work/venv-ov/bin/pip install -e '.[openvino,test]'
    /work/venv-ov/bin/python benchmarks/openvino_bench.py            # ~3-5 min on 2 cores
    /work/venv-ov/bin/python benchmarks/openvino_bench.py --quick --models mobilenetv2

For each model (folders from ``small_models.py``): onnxruntime CPU fp32 (the reference), onnxruntime's
OpenVINO provider (``device="openvino"``), OpenVINO's own runtime fp32 and bf16 (``device="openvino-runtime"``;
bf16 only where OpenVINO reports it for this CPU). All engines are timed **interleaved** (one call each, round
after round): bare model call at batch 1 (chelsea) and batch 8 (per image), and the API decode → explain →
overlay on chelsea. Agreement: probabilities and top-1 CAM vs onnxruntime CPU; bf16 also gets the fidelity
report (top-1 agreement, map Pearson, box IoU) on 32 held-out photos. Writes
``benchmarks/results/openvino-<stamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from small_models import MODELS, chelsea_photo, ensure_models  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def engines_for(folder: Path, threads: int | None) -> dict[str, Any]:
    """The engines compared: name → CamEngine (bf16 only where the CPU has it)."""
    import onnxruntime

    from cam_runtime.engine import CamEngine
    from cam_runtime.openvino_runtime import bf16_available

    engines = {"ort-cpu fp32": CamEngine.load(folder, device="cpu", threads=threads)}
    if "OpenVINOExecutionProvider" in onnxruntime.get_available_providers():
        engines["ort-openvino-ep fp32"] = CamEngine.load(folder, device="openvino", threads=threads)
    engines["openvino fp32"] = CamEngine.load(folder, device="openvino-runtime", threads=threads)
    if bf16_available():
        engines["openvino bf16"] = CamEngine.load(folder, providers=[("OpenVINORuntime", {"precision": "bf16"})],
                                                  threads=threads)
    return engines


def agreement(engines: dict[str, Any], photo: Path) -> dict[str, dict[str, float]]:
    """Max |Δ| of probabilities and top-1 CAM (raw, feature resolution) against onnxruntime CPU; same top-1?"""
    reference = engines["ort-cpu fp32"].explain(photo)[0]
    out = {}
    for name, engine in engines.items():
        result = engine.explain(photo)[0]
        raw_ref, raw = reference.targets[0].raw.ravel(), result.targets[0].raw.ravel()
        out[name] = {"same_top1": float(result.top_k[0].class_id == reference.top_k[0].class_id),
                     "probability_max_abs": abs(result.top_k[0].probability - reference.top_k[0].probability),
                     "cam_max_abs": float(np.abs(raw - raw_ref).max()),
                     "cam_pearson": float(np.corrcoef(raw, raw_ref)[0, 1])}
    return out


def timings(engines: dict[str, Any], photo: Path, batch_photos: list[Path], rounds: int) -> dict[str, Any]:
    """Interleaved medians: bare batch 1, bare batch 8 per image, API explain + overlay on ``photo``."""
    first = next(iter(engines.values()))
    one = first.preprocessor.tensor(first.load_image(photo).bgr)[None]
    eight = np.stack([first.preprocessor.tensor(first.load_image(p).bgr) for p in batch_photos])
    rows: dict[str, dict[str, list[float]]] = {n: {"bare_b1": [], "bare_b8": [], "e2e_b1": []} for n in engines}

    def clock(func: Any) -> float:
        start = time.perf_counter()
        func()
        return (time.perf_counter() - start) * 1e3

    for engine in engines.values():  # warm-up: every batch size compiled, caches filled
        engine.run(one), engine.run(eight), engine.explain(photo)[0].overlay(channel_order="BGR")
    for _ in range(rounds):
        for name, engine in engines.items():
            rows[name]["bare_b1"].append(clock(lambda e=engine: e.run(one)))
            rows[name]["bare_b8"].append(clock(lambda e=engine: e.run(eight)) / len(batch_photos))
            rows[name]["e2e_b1"].append(clock(lambda e=engine: e.explain(photo)[0].overlay(channel_order="BGR")))
    return {name: {key: float(np.median(values)) for key, values in cells.items()} for name, cells in rows.items()}


def bf16_fidelity(engines: dict[str, Any], held_out: list[Path]) -> dict[str, Any] | None:
    """The variant fidelity report of bf16 against onnxruntime fp32 on the held-out photos."""
    if "openvino bf16" not in engines:
        return None
    from cam_runtime.derive.fidelity import compare

    reference = engines["ort-cpu fp32"]
    decoded = [reference.load_image(p) for p in held_out]
    batch = np.stack([reference.preprocessor.tensor(d.bgr) for d in decoded])
    sizes = [(d.height, d.width) for d in decoded]
    return compare(reference, engines["openvino bf16"], batch, sizes).to_dict()


def markdown(r: dict[str, Any]) -> str:
    """The results as markdown."""
    lines = [f"# OpenVINO paths ({r['created']})", "",
             f"Machine: {r['machine']['cpu']}, CPU flags: {', '.join(r['cpu_flags'])}; OpenVINO capabilities: "
             f"{', '.join(r['openvino_capabilities'])}; onnxruntime {r['onnxruntime']}, OpenVINO {r['openvino']}. "
             f"Load {r['load_start']:.2f} → {r['load_end']:.2f}. `{r['command']}`", "",
             "| model | engine | bare b1 ms | bare b8 ms/img | explain+overlay b1 ms | vs ort-cpu b1 | vs ort-cpu b8 | "
             "same top-1 | CAM max abs Δ | CAM r |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model, cell in r["models"].items():
        base = cell["timings"]["ort-cpu fp32"]
        for name, t in cell["timings"].items():
            a = cell["agreement"][name]
            lines.append(f"| {model} | {name} | {t['bare_b1']:.2f} | {t['bare_b8']:.2f} | {t['e2e_b1']:.2f} | "
                         f"{base['bare_b1'] / t['bare_b1']:.2f}x | {base['bare_b8'] / t['bare_b8']:.2f}x | "
                         f"{a['same_top1']:.0f} | {a['cam_max_abs']:.2e} | {a['cam_pearson']:.6f} |")
    lines += ["", "bf16 fidelity vs onnxruntime fp32 (held-out photos):", "",
              "| model | images | top-1 agreement | map r mean / min | box IoU mean |", "|---|---|---|---|---|"]
    for model, cell in r["models"].items():
        f = cell.get("bf16_fidelity")
        if f:
            lines.append(f"| {model} | {f['images']} | {f['top1_agreement']:.1%} | {f['map_correlation_mean']:.5f} / "
                         f"{f['map_correlation_min']:.5f} | {f['box_iou_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every model and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=None, help="threads per engine (default: all cores)")
    args = parser.parse_args()
    import onnxruntime
    import openvino
    from photos import make_photos
    from run import loadavg, machine_info

    from cam_runtime.openvino_runtime import cpu_capabilities, cpu_flags

    def log(message: str) -> None:
        print(f"{dt.datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    photos = make_photos(RESULTS / "photos", 64)
    r: dict[str, Any] = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                         "command": " ".join(["python", "benchmarks/openvino_bench.py", *sys.argv[1:]]),
                         "machine": machine_info(), "cpu_flags": cpu_flags(),
                         "openvino_capabilities": cpu_capabilities(), "onnxruntime": onnxruntime.__version__,
                         "openvino": openvino.__version__, "load_start": loadavg(), "models": {}}
    folders = ensure_models(args.models, log)
    with tempfile.TemporaryDirectory(prefix="camr-ov-") as tmp:
        chelsea = chelsea_photo(Path(tmp))
        for model, folder in folders.items():
            log(f"{model}: engines")
            engines = engines_for(folder, args.threads)
            cell: dict[str, Any] = {"agreement": agreement(engines, chelsea)}
            log(f"{model}: timings ({', '.join(engines)}, interleaved)")
            cell["timings"] = timings(engines, chelsea, photos[:8], 10 if args.quick else 30)
            log(f"{model}: bf16 fidelity")
            cell["bf16_fidelity"] = bf16_fidelity(engines, photos[32:64] if not args.quick else photos[32:48])
            r["models"][model] = cell
            del engines
    r["load_end"] = loadavg()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = markdown(r)
    (RESULTS / f"openvino-{stamp}.json").write_text(json.dumps(r, indent=2, default=float) + "\n")
    (RESULTS / f"openvino-{stamp}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
