"""Ray Data scale-out against the single process, on the same images and the same cores, in one run.

    python benchmarks/ray_bench.py                               # shapes fixture, 300 images (~3 min on 2 cores)
    python benchmarks/ray_bench.py --model models/resnet50-random --images 64

Measures images/s of (1) the in-process API (``iter_explain`` + overlays written), (2) the single-process CLI
(``camr explain FOLDER``, its start-up on one image subtracted) and (3) ``cam_runtime.ray.explain_dataset`` with
1 actor (2 onnxruntime threads) and 2 actors (1 thread each) on a local Ray started with ``num_cpus=2``,
records written as Parquet and overlays as files. Ray's cluster start is timed apart (once per cluster);
each Ray run includes its actors' start (engine load). Writes ``benchmarks/results/ray-<stamp>.json/.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

RESULTS = ROOT / "benchmarks" / "results"
SHAPES = ROOT / "models" / "fixtures" / "shapes"
SHAPES_IMAGES = ROOT / "models" / "fixtures" / "shapes-test" / "images"


def make_images(folder: Path, model: Path, count: int) -> list[Path]:
    """``count`` images: the shapes test images repeated for the fixture model, photos otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    if model.resolve() == SHAPES.resolve():
        sources = sorted(SHAPES_IMAGES.glob("*.png"))
        paths = [folder / f"{i:05d}_{sources[i % len(sources)].name}" for i in range(count)]
        for i, path in enumerate(paths):
            shutil.copy(sources[i % len(sources)], path)
        return paths
    from photos import make_photos

    return make_photos(folder, count)


def bench_api(model: Path, images: list[Path], out: Path, batch: int) -> float:
    """images/s of the in-process API with overlays written (the engine loaded before the clock starts)."""
    import cv2

    from cam_runtime import CamEngine

    engine = CamEngine.load(model, device="cpu", threads=2)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, result in enumerate(engine.iter_explain(images, batch_size=batch)):
        cv2.imwrite(str(out / f"{i}.jpg"), result.overlay(channel_order="BGR"))  # type: ignore[union-attr]
    return len(images) / (time.perf_counter() - start)


def bench_cli(model: Path, folder: Path, images: list[Path], out: Path, batch: int) -> tuple[float, float]:
    """(images/s, start-up s) of the single-process CLI; start-up = the same command on one image."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(inputs: Path, dest: Path) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cam_runtime", "explain", str(inputs), "-m", str(model), "-o",
                        str(dest), "-b", str(batch), "-q", "--force"], check=True, env=env, capture_output=True)
        return time.perf_counter() - start

    one = out.parent / "one"
    one.mkdir(exist_ok=True)
    shutil.copy(images[0], one / images[0].name)
    startup = run(one, out.parent / "cli-one")
    wall = run(folder, out)
    return len(images) / max(wall - startup, 1e-9), startup


def bench_ray(ray: Any, model: Path, images: list[Path], out: Path, actors: int, batch: int) -> float:
    """images/s of explain_dataset → write_parquet with ``actors`` actors on the running local Ray."""
    from cam_runtime.ray import explain_dataset, read_records

    start = time.perf_counter()
    ds = ray.data.from_items([{"path": str(p)} for p in images])
    explain_dataset(ds, model, batch_size=batch, concurrency=actors, threads=max(1, 2 // actors), output=out,
                    root=str(images[0].parent), records_dir=out / "records").materialize()
    wall = time.perf_counter() - start
    table = read_records(out, ["key", "status"])
    assert table.num_rows == len(images) and len(set(table.column("key").to_pylist())) == len(images)
    return len(images) / wall


def main() -> None:
    """Run every section once and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHAPES)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    import ray

    load_start = os.getloadavg()
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp_name:
        tmp = Path(tmp_name)
        images = make_images(tmp / "images", args.model, args.images)
        api = bench_api(args.model, images, tmp / "api", args.batch)
        rows.append(("in-process API (iter_explain + overlays, 2 threads)", api, "engine loaded before the clock"))
        cli, startup = bench_cli(args.model, tmp / "images", images, tmp / "cli", args.batch)
        rows.append(("single-process CLI (camr explain FOLDER)", cli, f"start-up {startup:.2f} s subtracted"))
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
        ray.data.DataContext.get_current().enable_progress_bars = False
        cluster_start = time.perf_counter() - start
        try:
            for actors in (1, 2):
                rate = bench_ray(ray, args.model, images, tmp / f"ray-{actors}", actors, args.batch)
                rows.append((f"Ray Data, {actors} actor(s) x {max(1, 2 // actors)} thread(s)", rate,
                             "actor start (engine load) included"))
        finally:
            ray.shutdown()
    two = rows[-1][1]
    result = {
        "stamp": dt.datetime.now().isoformat(timespec="seconds"), "model": str(args.model), "images": args.images,
        "batch": args.batch, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "ray_cluster_start_s": round(cluster_start, 2),
        "rows": [{"what": w, "images_per_s": round(r, 2), "note": n} for w, r, n in rows],
        "ray2_vs_cli": round(two / cli, 3), "target_ray2_vs_cli": 0.8,
    }
    lines = [f"model {args.model.name}, {args.images} images, batch {args.batch}, {os.cpu_count()} cores, "
             f"load {load_start[0]:.1f} → {os.getloadavg()[0]:.1f}; Ray cluster start {cluster_start:.1f} s", "",
             "| run | images/s | note |", "|---|---|---|"]
    lines += [f"| {w} | {r:.1f} | {n} |" for w, r, n in rows]
    lines += ["", f"Ray 2 actors / single-process CLI = {two / cli:.2f} (target ≥ 0.8)"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"ray-{args.model.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"\nresults: {stem}.json / .md")


if __name__ == "__main__":
    main()
