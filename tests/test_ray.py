"""Scale-out on a real local Ray cluster (one per module): records equal the in-process engine and the
single-process CLI, broken files become failed records, a killed actor is retried with every input exactly
once, and the CLI resumes with --skip-existing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from cam_runtime import CamEngine
from cam_runtime.ray import CRASH_ONCE_ENV, explain_dataset, read_records, record_files

ray = pytest.importorskip("ray", reason="the ray extra (ray[data], pyarrow) is not installed")
pytest.importorskip("ray.data", reason="the ray extra needs Ray Data: pip install 'ray[data]'")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "fixtures" / "shapes"
IMAGES = REPO / "models" / "fixtures" / "shapes-test" / "images"
N_GOOD = 492
BAD = ("zz_truncated.png", "zz_text.jpg", "zz_empty.png", "zz_half.jpg", "zz_html.png", "zz_zeros.bmp",
       "zz_header_only.png", "zz_random.jpg")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """One local Ray instance for the whole module (starting one takes ~10 s on 2 cores); its GCS address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N_GOOD images (the 150 fixture images and their flips and rotations) and 8 broken files: 500 inputs."""
    folder = tmp_path_factory.mktemp("ray-inputs")
    sources = sorted(IMAGES.glob("*.png"))
    variants = (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: np.rot90(a))
    for i in range(N_GOOD):
        path = sources[i % len(sources)]
        pixels = variants[i // len(sources)](cv2.imread(str(path), cv2.IMREAD_COLOR))
        cv2.imwrite(str(folder / f"{path.stem}-v{i // len(sources)}.png"), np.ascontiguousarray(pixels))
    first = sources[0].read_bytes()
    jpeg = cv2.imencode(".jpg", cv2.imread(str(sources[1])))[1].tobytes()
    (folder / BAD[0]).write_bytes(first[:60])
    (folder / BAD[1]).write_text("not an image\n", encoding="utf-8")
    (folder / BAD[2]).write_bytes(b"")
    (folder / BAD[3]).write_bytes(jpeg[: len(jpeg) // 2])
    (folder / BAD[4]).write_text("<html><body>not a png</body></html>", encoding="utf-8")
    (folder / BAD[5]).write_bytes(bytes(4096))
    (folder / BAD[6]).write_bytes(first[:33])
    (folder / BAD[7]).write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return folder


def camr(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "cam_runtime", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_records_match_the_engine_and_bad_files_fail(cluster: str, inputs: Path, tmp_path: Path) -> None:
    files = sorted(str(p) for p in inputs.iterdir())
    ds = ray.data.read_binary_files(files, include_paths=True, num_cpus=0)
    out = tmp_path / "out"
    explain_dataset(ds, MODEL, method="gradcam++", top_k=2, batch_size=8, concurrency=2, output=out,
                    root=str(inputs)).write_parquet(str(out / "records"), ray_remote_args={"num_cpus": 0})
    records = {r["source"]: r for r in read_records(out).to_pylist()}
    assert sorted(records) == files

    for name in BAD:
        bad = records[str(inputs / name)]
        assert bad["status"] == "failed" and bad["error_type"] == "ImageDecodeError", bad
        assert str(inputs / name) in bad["error"] and not bad["overlays"] and not bad["maps"]

    engine = CamEngine.load(MODEL, device="cpu")
    good = [f for f in files if Path(f).name not in BAD]
    expected = engine.explain(good, method="gradcam++", top_k=2)
    for path, result in zip(good, expected, strict=True):
        record = records[path]
        assert record["status"] == "ok" and record["key"] == Path(path).name.replace(".png", "_png")
        assert [p["class_id"] for p in record["top_k"]] == [p.class_id for p in result.top_k]
        assert [p["probability"] for p in record["top_k"]] == pytest.approx([p.probability for p in result.top_k])
        maps = np.asarray(record["maps"], dtype=np.float32)
        np.testing.assert_allclose(maps, np.stack([t.raw for t in result.targets]), rtol=1e-5, atol=1e-6)
        for target, mine in zip(result.targets, record["targets"], strict=True):
            assert [b.to_dict() for b in target.boxes] == mine["boxes"]
        assert [t["overlay"] for t in record["targets"]] == record["overlays"]
        assert all((out / name).stat().st_size > 0 for name in record["overlays"])
        assert len(record["overlays"]) == 2


def test_killed_actor_is_retried_and_every_input_is_recorded_once(cluster: str, inputs: Path, tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    files = sorted(str(p) for p in inputs.iterdir())
    ds = ray.data.from_items([{"path": f} for f in files])
    out = tmp_path / "out"
    # The actors write the records (one Parquet file per batch); the crash comes after the batch's file is
    # written, so the retried batch must replace it rather than add a second copy.
    records = explain_dataset(ds, MODEL, batch_size=4, concurrency=2, output=out, root=str(inputs),
                              records_dir=out / "records", runtime_env={"env_vars": {CRASH_ONCE_ENV: str(marker)}})
    assert sorted(records.to_pandas().columns) == ["key", "status"]
    assert marker.exists(), "no actor crashed: the test did not test a retry"
    table = read_records(out, ["source", "status", "overlays"])
    counts = Counter(table.column("source").to_pylist())
    assert counts == Counter(files)  # every input exactly once: none lost, none duplicated
    statuses = dict(zip(table.column("source").to_pylist(), table.column("status").to_pylist(), strict=True))
    assert sorted(s for s, v in statuses.items() if v == "failed") == sorted(str(inputs / n) for n in BAD)
    assert not list(out.rglob(".camr-*.tmp"))  # the killed batch's overlays were atomic (or rewritten)


def test_cli_matches_single_process_cli_and_resumes(cluster: str, inputs: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(sorted(IMAGES.glob("*.png"))[-1], extra / "last.png")
    uri = (extra / "last.png").as_uri()  # a pyarrow file-system URI (file://), read inside the actors
    out, single = tmp_path / "ray-out", tmp_path / "single-out"
    args = ("-m", MODEL, "-k", "2", "--method", "cam", "-b", "8")
    result = camr("explain", "--ray", cluster, inputs, uri, "-o", out, *args)
    assert result.returncode == 1, result.stderr  # 1: some inputs failed, the others are done
    assert f"{len(BAD)} failed" in " ".join(result.stderr.split())  # the summary line wraps at 80 columns
    baseline = camr("explain", inputs, extra / "last.png", "-o", single, "-q", *args)
    assert baseline.returncode == 1, baseline.stderr

    ours = {r["key"]: r for r in read_records(out).to_pylist()}
    theirs = {r["key"]: r for r in json.loads((single / "report.json").read_text(encoding="utf-8"))["images"]}
    assert sorted(ours) == sorted(theirs) and len(ours) == N_GOOD + len(BAD) + 1
    for key, record in theirs.items():
        mine = ours[key]
        assert mine["status"] == record["status"]
        assert mine["error_type"] == record["error_type"]
        if record["status"] != "ok":
            continue
        assert [p["class_id"] for p in mine["top_k"]] == [p["class_id"] for p in record["top_k"]]
        for a, b in zip(mine["targets"], record["targets"], strict=True):
            assert (a["class_id"], a["boxes"], a["overlay"]) == (b["class_id"], b["boxes"], b["overlay"])
            assert a["probability"] == pytest.approx(b["probability"])
            assert (out / a["overlay"]).stat().st_size > 0
    assert ours["last_png"]["source"] == uri

    again = camr("explain", "--ray", cluster, inputs, uri, "-o", out, *args)
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwritten without a flag

    victim = ours[sorted(k for k in ours if ours[k]["status"] == "ok")[3]]
    (out / victim["overlays"][1]).unlink()
    before = len(record_files(out))
    resumed = camr("explain", "--ray", cluster, inputs, uri, "-o", out, "--skip-existing", *args)
    assert resumed.returncode == 1, resumed.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    # Only what was missing is redone: the image whose overlay went, and the failures (retried).
    assert (summary["explained"], summary["already_done"]) == (1 + len(BAD), N_GOOD)
    assert (summary["missing"], summary["duplicated"]) == (0, 0)
    keys = Counter(read_records(out, ["key"]).column("key").to_pylist())
    assert keys == Counter(list(ours))  # still exactly one record per input
    assert (out / victim["overlays"][1]).stat().st_size > 0
    assert len(record_files(out)) >= before

    other = camr("explain", "--ray", cluster, inputs, uri, "-o", out, "--skip-existing", "-m", MODEL, "-k", "2",
                 "--method", "layercam", "-b", "8")
    assert other.returncode == 2 and "different run" in other.stderr and "--redo-mismatched" in other.stderr


def test_cli_trust_model_graph_reaches_the_actors(cluster: str, tmp_path: Path) -> None:
    """A graph outside the CNN allowlist (a Loop) is refused in one line; --trust-model-graph loads it on the
    driver's fail-fast check and in every actor, so the run completes."""
    pytest.importorskip("onnx", reason="building the Loop graph needs onnx (the evaluate or onnx-import extra)")
    from test_model_graph import replace_model, tiny_model, with_loop

    from tiny_models import make_tiny_folder

    model = make_tiny_folder(tmp_path / "loop-model")
    replace_model(model, with_loop(tiny_model()))
    images = tmp_path / "images"
    images.mkdir()
    for source in sorted(IMAGES.glob("*.png"))[:3]:
        shutil.copy(source, images / source.name)
    refused = camr("explain", "--ray", cluster, images, "-o", tmp_path / "refused", "-m", model)
    assert refused.returncode == 2 and "--trust-model-graph" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()
    out = tmp_path / "trusted"
    trusted = camr("explain", "--ray", cluster, images, "-o", out, "-m", model, "--trust-model-graph", "-q")
    assert trusted.returncode == 0, trusted.stderr
    records = read_records(out, ["status"]).column("status").to_pylist()
    assert records == ["ok"] * 3
