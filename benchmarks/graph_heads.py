"""Cost of the head graphs per image at batch 8: gradient graph vs backbone inference (VGG16, MobileNetV3Large)
and ReciproCAM through the head vs inference (7×7 map at 224 px), with head.onnx's position_masks input and, as
before it existed, with the masked copies through the plain head.

    python benchmarks/graph_heads.py                     # exports models/bench-graph/<arch> first if missing
    python benchmarks/graph_heads.py --runs 5 --archs mobilenetv3large

Prints a table and writes benchmarks/results/graph-heads-<stamp>.json and .md. Medians of ``--runs`` timed
repeats after one warm-up; the machine's load average is recorded (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cam_runtime import CamEngine  # noqa: E402
from cam_runtime.heads import GraphHead, Head  # noqa: E402
from cam_runtime.methods import GradCAM, HeadInputs, ReciproCAM  # noqa: E402

BATCH = 8
TARGETS = {"gradient graph / inference": 0.10, "ReciproCAM through the head / inference": 0.25}


def median_ms(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``fn`` in ms after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


class MaskedCopies(Head):
    """A graph head without its position_masks input: ReciproCAM runs the h·w masked copies through head.onnx
    (the implementation before the masked forward, for the before/after columns)."""

    linear = False

    def __init__(self, head: GraphHead) -> None:
        self.head = head
        self.num_classes = head.num_classes

    def forward(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.head.forward(features)

    def logit_gradients(self, features: np.ndarray, directions: np.ndarray) -> np.ndarray:
        return self.head.logit_gradients(features, directions)


def ensure_folder(arch: str, size: int) -> Path:
    """models/bench-graph/<arch>-<size> with random weights, exported once."""
    folder = ROOT / "models" / "bench-graph" / f"{arch}-{size}"
    if not (folder / "manifest.json").exists():
        from export.exporter import export_model

        print(f"exporting {arch} at {size} px (once) ...", flush=True)
        export_model(folder, arch=arch, weights="random", input_size=size)
    return folder


def measure(arch: str, size: int, runs: int) -> dict[str, object]:
    """One row: per-image ms of inference, gradient graph, Grad-CAM maps and ReciproCAM through the head."""
    engine = CamEngine.load(ensure_folder(arch, size), device="cpu")
    assert isinstance(engine.head, GraphHead)
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(BATCH)]
    batch = np.stack([engine.preprocessor.tensor(p[..., ::-1].copy()) for p in pixels])
    probs, features = engine.run(batch)
    classes = np.argsort(-probs, axis=1)[:, :1]
    directions = np.zeros((BATCH, 1, engine.num_classes), np.float32)
    directions[np.arange(BATCH), 0, classes[:, 0]] = 1.0
    head = engine.head
    inference = median_ms(lambda: engine.run(batch), runs) / BATCH
    gradient = median_ms(lambda: head.logit_gradients(features, directions), runs) / BATCH
    head_forward = median_ms(lambda: head.forward(features), runs) / BATCH

    def gradcam() -> object:
        return GradCAM().maps(HeadInputs(features, probs, None, classes, head=head))

    def reciprocam() -> object:
        return ReciproCAM().maps(HeadInputs(features, probs, None, classes, head=head))

    def reciprocam_copies() -> object:
        return ReciproCAM().maps(HeadInputs(features, probs, None, classes, head=MaskedCopies(head)))

    if not head.takes_masks:
        raise SystemExit(f"{arch}: head.onnx has no position_masks input; delete {ensure_folder(arch, size)} "
                         "to re-export it")
    recipro = median_ms(reciprocam, runs) / BATCH
    copies = median_ms(reciprocam_copies, runs) / BATCH

    return {"arch": arch, "input": size, "feature_shape": list(features.shape[1:]),
            "inference_ms": inference, "gradient_graph_ms": gradient, "head_forward_ms": head_forward,
            "gradcam_total_maps_ms": median_ms(gradcam, runs) / BATCH,
            "reciprocam_ms": recipro, "reciprocam_masked_copies_ms": copies,
            "gradient_over_inference": gradient / inference,
            "reciprocam_over_inference": recipro / inference,
            "reciprocam_masked_copies_over_inference": copies / inference}


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["vgg16", "mobilenetv3large"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    rows = [measure(arch, args.size, args.runs) for arch in args.archs]
    header = ("| arch | features | inference ms/img | gradient graph ms/img | gradient / inference (≤ 10%) | "
              "head forward ms/img | Grad-CAM maps ms/img | ReciproCAM masked copies ms/img (before) | "
              "ReciproCAM ms/img | ReciproCAM / inference (≤ 25%) |")
    lines = [header, "|" + " --- |" * 10]
    for r in rows:
        lines.append(f"| {r['arch']} | {'×'.join(map(str, r['feature_shape']))} | {r['inference_ms']:.2f} | "
                     f"{r['gradient_graph_ms']:.3f} | {100 * r['gradient_over_inference']:.1f}% | "  # type: ignore[operator]
                     f"{r['head_forward_ms']:.3f} | {r['gradcam_total_maps_ms']:.3f} | "
                     f"{r['reciprocam_masked_copies_ms']:.2f} "
                     f"({100 * r['reciprocam_masked_copies_over_inference']:.0f}%) | {r['reciprocam_ms']:.2f} | "  # type: ignore[operator]
                     f"{100 * r['reciprocam_over_inference']:.1f}% |")  # type: ignore[operator]
    table = "\n".join(lines)
    print(table)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": load_start,
               "loadavg_end": os.getloadavg(), "batch": BATCH, "runs": args.runs}
    (out / f"graph-heads-{stamp}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    (out / f"graph-heads-{stamp}.md").write_text(f"{table}\n\nmachine: {json.dumps(machine)}\n")
    print(f"wrote {out / f'graph-heads-{stamp}.md'}")


if __name__ == "__main__":
    main()
