"""`camr import` speed: import time of synthetic ONNX classifiers of growing size, and per-image explain cost of an
imported folder vs the same network written directly as a two-output folder (what an exporter produces).

    python benchmarks/import_bench.py            # ~25 MB and ~100 MB models; ~1 min on 2 cores
    python benchmarks/import_bench.py --quick    # the ~25 MB model only

Writes benchmarks/results/import-<stamp>.json and .md. Target (issue 13): a ~100 MB ONNX imports in < 10 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cam_runtime import CamEngine  # noqa: E402
from cam_runtime.model import (  # noqa: E402
    InputSpec,
    OutputSpec,
    write_model_folder,
)
from export.onnx_import import PRESETS, import_onnx  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIZE, CLASSES, TARGET_S = 224, 1000, 10.0


def build(width: int, blocks: int, features_output: bool) -> bytes:
    """Stem conv → ``blocks`` 1×1 convs of width² weights → GAP → Flatten → Gemm (logits), NCHW, dynamic batch."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.1, (width, 3, 32, 32)).astype(np.float32), "stem_w")]
    nodes = [helper.make_node("Conv", ["image", "stem_w"], ["x0"], strides=[32, 32])]
    for i in range(blocks):
        inits.append(numpy_helper.from_array(
            rng.normal(0, 1 / np.sqrt(width), (width, width, 1, 1)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"c{i}"]),
                  helper.make_node("Relu", [f"c{i}"], [f"x{i + 1}"])]
    feat = f"x{blocks}"
    inits += [numpy_helper.from_array(rng.normal(0, 0.05, (CLASSES, width)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [feat], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["vec"]),
              helper.make_node("Gemm", ["vec", "fc_w", "fc_b"], ["logits"], transB=1)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])]
    if features_output:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
        outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES]),
                   helper.make_tensor_value_info(feat, TensorProto.FLOAT, ["N", width, 7, 7])]
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                             ["N", 3, SIZE, SIZE])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def explain_ms(folder: Path, photo: Path, repeats: int) -> float:
    engine = CamEngine.load(folder, device="cpu")
    engine.explain(photo)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.explain(photo)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the ~25 MB model")
    parser.add_argument("--repeats", type=int, default=15, help="explain runs per folder (median)")
    args = parser.parse_args()
    configs = [("~25 MB", 1024, 5), ("~100 MB", 2048, 5)][: 1 if args.quick else 2]
    photo = ROOT / "cam_runtime" / "data" / "examples" / "cat.jpg"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, width, blocks in configs:
            src = Path(tmp) / f"{width}.onnx"
            src.write_bytes(build(width, blocks, features_output=False))
            start = time.perf_counter()
            imported = import_onnx(src, Path(tmp) / f"imported-{width}", labels=None)
            import_s = time.perf_counter() - start
            direct = Path(tmp) / f"direct-{width}"
            rng = np.random.default_rng(0)  # same weights as build(): regenerate the head in the same order
            _ = rng.normal(0, 0.1, (width, 3, 32, 32))
            for _i in range(blocks):
                _ = rng.normal(0, 1 / np.sqrt(width), (width, width, 1, 1))
            fc_w = rng.normal(0, 0.05, (CLASSES, width)).astype(np.float32)
            write_model_folder(direct, model=build(width, blocks, features_output=True), weights=fc_w.T,
                               bias=np.zeros(CLASSES, np.float32), labels=None, name="direct",
                               input_spec=InputSpec("image", "NCHW", SIZE, SIZE), preprocess=PRESETS["torchvision"],
                               outputs=OutputSpec("probabilities", f"x{blocks}", "NCHW"))
            rows.append({"model": label, "onnx_mb": round(src.stat().st_size / 1e6, 1), "import_s": round(import_s, 2),
                         "explain_ms_imported": round(explain_ms(imported, photo, args.repeats), 2),
                         "explain_ms_direct": round(explain_ms(direct, photo, args.repeats), 2),
                         "target_met": import_s < TARGET_S})
    lines = ["| model | ONNX MB | import s (target < 10) | explain ms/image, imported | explain ms/image, direct "
             "folder |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['onnx_mb']} | {r['import_s']} | {r['explain_ms_imported']} | "
              f"{r['explain_ms_direct']} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    info = {"stamp": dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "cpus": os.cpu_count(), "loadavg": os.getloadavg()[0], "repeats": args.repeats, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"import-{stamp}.json").write_text(json.dumps(info, indent=2) + "\n")
    (RESULTS / f"import-{stamp}.md").write_text(f"# camr import benchmark {info['stamp']}\n\n"
                                                f"load average {info['loadavg']:.2f}, {info['cpus']} CPUs\n\n"
                                                f"{table}\n")
    print(f"wrote {RESULTS / f'import-{stamp}.json'}")
    return 0 if all(r["target_met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
