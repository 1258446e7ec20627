"""One CamEngine shared by several threads gives the sequential results; folder runs keep memory bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from cam_runtime.engine import CamEngine
from cam_runtime.methods import ScoreCAM
from cam_runtime.results import ExplainResult
from tiny_models import make_tiny_folder

METHODS = ["cam", "gradcam++", "scorecam", "eigencam"]
THREADS = 4


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> CamEngine:
    folder = make_tiny_folder(tmp_path_factory.mktemp("conc_model") / "tiny", seed=5)
    return CamEngine.load(folder, threads=1)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, (int(rng.integers(20, 70)), int(rng.integers(20, 70)), 3), dtype=np.uint8)
            for _ in range(24)]


def fingerprint(results: list[ExplainResult]) -> list[tuple]:
    return [(tuple(p.class_id for p in r.top_k), tuple(round(p.probability, 6) for p in r.top_k),
             tuple(t.heatmap.tobytes() for t in r.targets)) for r in results]


def test_shared_engine_matches_sequential_results(engine: CamEngine, images: list[np.ndarray]) -> None:
    shared_scorecam = ScoreCAM(max_channels=8, batch_size=4)  # one instance used by every thread at once
    jobs = [(method, images[i::3], batch) for method in METHODS for i, batch in ((0, 1), (1, 4), (2, 16))]

    def run(job: tuple[str, list[np.ndarray], int]) -> list[tuple]:
        method, inputs, batch = job
        chosen = shared_scorecam if method == "scorecam" else method
        return fingerprint(engine.explain(inputs, method=chosen, top_k=2, batch_size=batch))

    expected = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for _ in range(3):  # several rounds, each job twice, so the threads really overlap
            assert list(pool.map(run, jobs * 2)) == expected * 2
    assert shared_scorecam.inputs is None  # the caller's instance never holds a call's state


def test_iter_explain_streams_from_several_threads(engine: CamEngine, images: list[np.ndarray]) -> None:
    expected = fingerprint(engine.explain(images, method="gradcam"))

    def stream(offset: int) -> list[tuple]:
        order = images[offset:] + images[:offset]
        out = fingerprint([r for r in engine.iter_explain(order, method="gradcam", batch_size=5)
                           if isinstance(r, ExplainResult)])
        return out[-offset:] + out[:-offset] if offset else out

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for result in pool.map(stream, [0, 3, 7, 11, 0, 5]):
            assert result == expected


MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    import cam_runtime.report
    from cam_runtime.cli import app

    # The HTML report embeds thumbnails of the first MAX_EMBEDDED_ROWS images by design (~25 kB each); a low cap
    # here makes what remains per image (records, names) visible, which is what must not grow with the count.
    cam_runtime.report.MAX_EMBEDDED_ROWS = 20

    def rss_kib(field):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith(field))

    baseline = rss_kib("VmRSS:")
    try:
        app(sys.argv[1:], prog_name="camr")
    except SystemExit as exc:
        code = exc.code
    print(json.dumps({"baseline_kib": baseline, "peak_kib": rss_kib("VmHWM:"), "exit": code}))
""")


def folder_run_memory(model: Path, images: Path, out: Path) -> dict:
    args = ["explain", str(images), "--model", str(model), "--output", str(out), "--quiet", "--format", "png",
            "--threads", "1", "--batch-size", "8"]
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_folder_run_memory_is_bounded(tmp_path: Path) -> None:
    model = make_tiny_folder(tmp_path / "model")
    rng = np.random.default_rng(3)
    folders = {}
    for count in (100, 1200):
        folder = folders[count] = tmp_path / f"images_{count}"
        folder.mkdir()
        for i in range(count):
            cv2.imwrite(str(folder / f"img_{i:05d}.png"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    small = folder_run_memory(model, folders[100], tmp_path / "out_small")
    large = folder_run_memory(model, folders[1200], tmp_path / "out_large")
    assert small["exit"] == 0 and large["exit"] == 0
    assert len(list((tmp_path / "out_large").glob("img_*.png"))) == 1200
    growth_small = (small["peak_kib"] - small["baseline_kib"]) / 1024
    growth_large = (large["peak_kib"] - large["baseline_kib"]) / 1024
    print(f"\n[memory] peak RSS growth: 100 images {growth_small:.1f} MB, 1200 images {growth_large:.1f} MB")
    assert growth_large < 150
    # 12x the images must not cost anything near 12x the memory: streaming, not loading everything.
    assert growth_large - growth_small < 20


ENGINE_PROBE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from cam_runtime.engine import CamEngine

    def rss_kib():
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))

    engine = CamEngine.load(sys.argv[1], threads=1)
    paths = (p for p in sorted(Path(sys.argv[2]).iterdir()))  # a generator: nothing is listed up front
    samples = {}
    for count, result in enumerate(engine.iter_explain(paths, batch_size=8), start=1):
        result.overlay()  # touch the result like a writer would, then drop it
        if count in (200, 1200):
            samples[count] = rss_kib()
    print(json.dumps(samples))
""")


@pytest.mark.slow
def test_engine_stream_memory_is_flat(tmp_path: Path) -> None:
    model = make_tiny_folder(tmp_path / "model")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(1200):
        cv2.imwrite(str(folder / f"img_{i:05d}.png"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    done = subprocess.run([sys.executable, "-c", ENGINE_PROBE, str(model), str(folder)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    samples = {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    growth_mb = (samples[1200] - samples[200]) / 1024
    print(f"\n[memory] engine RSS from image 200 to 1200: {growth_mb:+.1f} MB")
    assert growth_mb < 5
