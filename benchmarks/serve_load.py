"""Load benchmark of ``camr serve`` on loopback, with the in-process API baselines in the same run.

    python benchmarks/serve_load.py                      # 60 s per concurrency level (the issue's setting)
    python benchmarks/serve_load.py --duration 15        # shorter, for a shared machine

Phases: in-process ``engine.explain`` p50 (one image) and ``iter_explain`` throughput; a server at concurrency
1, 8 and 32 for ``--duration`` seconds each (throughput, p50/p95/p99, errors); server RSS before and after
``--rss-requests`` requests; a second server with ``--overload-queue`` places driven at concurrency
``--overload-concurrency`` (503 count and latency, peak RSS). The client is one asyncio process with httpx on
the same machine, so client and server share the cores. Writes ``benchmarks/serve-results.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = ROOT / "models" / "fixtures" / "shapes"
IMAGE = ROOT / "cam_runtime" / "data" / "examples" / "cat.jpg"
OUT = ROOT / "benchmarks" / "serve-results"
QUERY = {"images": "none", "maps": "false"}  # the JSON answer: top-k, targets, boxes, stats


class Server:
    """A ``camr serve`` subprocess on a free loopback port."""

    def __init__(self, model: Path, *args: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix="camr-serve-", suffix=".log")[1])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "cam_runtime", "serve", "-m", str(model),
                                             "--port", "0", *args],
                                            stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while True:
            match = re.search(r"running on http://127\.0\.0\.1:(\d+)", self.log.read_text(), re.I)
            if match:
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = self.log.read_text()
                self.stop()
                raise SystemExit(f"server did not start:\n{text}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{match.group(1)}"

    def rss_mib(self) -> float:
        """Resident memory of the server process."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        """SIGTERM and wait (the drained exit status)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.log.unlink(missing_ok=True)


async def load(url: str, body: bytes, concurrency: int, *, route: str, duration: float | None = None,
               count: int | None = None) -> dict[str, Any]:
    """``concurrency`` workers posting ``body`` until ``duration`` seconds or ``count`` requests in total."""
    import httpx

    latencies: dict[int, list[float]] = {}
    errors: dict[str, int] = {}
    sent = 0
    stop_at = time.perf_counter() + duration if duration else float("inf")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < stop_at and (count is None or sent < count):
                sent += 1
                start = time.perf_counter()
                try:
                    response = await client.post(route, content=body, params=QUERY,
                                                 headers={"content-type": "image/jpeg"})
                    code = response.status_code
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.setdefault(code, []).append(time.perf_counter() - start)

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - begin
    return {"elapsed_s": elapsed, "latencies": latencies, "transport_errors": errors}


def summary(run: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """Throughput of 200s, their percentiles in ms, and the count of everything else."""
    ok = np.asarray(run["latencies"].get(200, [])) * 1e3
    others = {str(code): len(v) for code, v in run["latencies"].items() if code != 200}
    return {"concurrency": concurrency, "requests": int(ok.size + sum(others.values())),
            "throughput_rps": ok.size / run["elapsed_s"],
            "p50_ms": float(np.percentile(ok, 50)) if ok.size else None,
            "p95_ms": float(np.percentile(ok, 95)) if ok.size else None,
            "p99_ms": float(np.percentile(ok, 99)) if ok.size else None,
            "errors": sum(others.values()) + sum(run["transport_errors"].values()),
            "error_kinds": {**others, **run["transport_errors"]}}


def server_buckets(metrics: str, code: str) -> float | None:
    """Fraction of the server's ``code`` answers on the explain route timed by the server within 50 ms."""
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("camr_request_duration_seconds_bucket") and f'code="{code}"' in line \
                and 'route="/v1/models/{name}/explain"' in line:
            le = re.search(r'le="([^"]+)"', line)
            if le:
                counts[le.group(1)] = float(line.rsplit(" ", 1)[1])
    total = counts.get("+Inf", 0.0)
    return counts.get("0.05", 0.0) / total if total else None


def baselines(model: Path, body: bytes, seconds: float) -> dict[str, float]:
    """In-process API: ``explain`` of the same bytes (p50, JSON summary included) and ``iter_explain`` throughput."""
    from cam_runtime import CamEngine

    engine = CamEngine.load(model)
    for _ in range(20):
        engine.explain(body)[0].to_dict()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 50:
        start = time.perf_counter()
        json.dumps(engine.explain(body)[0].to_dict())
        times.append(time.perf_counter() - start)
    images = [body] * 2000
    start = time.perf_counter()
    done = sum(1 for r in engine.iter_explain(images, batch_size=16) if json.dumps(r.to_dict()))
    throughput = done / (time.perf_counter() - start)
    return {"explain_p50_ms": float(np.median(times)) * 1e3, "iter_explain_rps": throughput}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL, help="model folder (default: the shapes fixture)")
    parser.add_argument("--image", type=Path, default=IMAGE, help="the image every request sends")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    parser.add_argument("--rss-requests", type=int, default=10_000, help="requests between the RSS readings")
    parser.add_argument("--overload-concurrency", type=int, default=256)
    parser.add_argument("--overload-queue", type=int, default=64)
    parser.add_argument("--overload-duration", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=OUT, help="results path without suffix (.md and .json)")
    args = parser.parse_args()
    body = args.image.read_bytes()
    # The server names each model after its manifest.
    route = f"/v1/models/{json.loads((args.model / 'manifest.json').read_text(encoding='utf-8'))['name']}/explain"
    levels = [int(c) for c in args.concurrency.split(",")]
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()

    print("in-process baselines …", flush=True)
    base = baselines(args.model, body, min(args.duration, 10.0))

    server = Server(args.model)
    runs = []
    try:
        asyncio.run(load(server.url, body, route=route, concurrency=8, count=200))  # warm-up
        for level in levels:
            print(f"concurrency {level} for {args.duration:g} s …", flush=True)
            outcome = asyncio.run(load(server.url, body, route=route, concurrency=level, duration=args.duration))
            runs.append(summary(outcome, level))
        print(f"RSS over {args.rss_requests} requests …", flush=True)
        rss_before = server.rss_mib()
        rss_run = summary(asyncio.run(load(server.url, body, route=route, concurrency=8, count=args.rss_requests)), 8)
        rss_after = server.rss_mib()
    finally:
        exit_status = server.stop()

    print(f"overload: concurrency {args.overload_concurrency}, queue {args.overload_queue} …", flush=True)
    server = Server(args.model, "--queue-size", str(args.overload_queue))
    try:
        asyncio.run(load(server.url, body, route=route, concurrency=8, count=100))
        rss_idle = server.rss_mib()
        peak = [rss_idle]

        async def overload() -> dict[str, Any]:
            async def watch() -> None:
                while True:
                    peak.append(server.rss_mib())
                    await asyncio.sleep(0.25)

            watcher = asyncio.create_task(watch())
            try:
                return await load(server.url, body, route=route, concurrency=args.overload_concurrency,
                                  duration=args.overload_duration)
            finally:
                watcher.cancel()

        over = asyncio.run(overload())
        import httpx

        server_side = server_buckets(httpx.get(f"{server.url}/metrics", timeout=60).text, "503")
    finally:
        overload_exit = server.stop()
    rejected = np.asarray(over["latencies"].get(503, [])) * 1e3
    served = summary(over, args.overload_concurrency)
    overload_result = {
        "concurrency": args.overload_concurrency, "queue": args.overload_queue,
        "ok": len(over["latencies"].get(200, [])),
        "ok_rps": served["throughput_rps"], "ok_p50_ms": served["p50_ms"], "ok_p99_ms": served["p99_ms"],
        "rejected_503": int(rejected.size),
        "p50_503_ms": float(np.percentile(rejected, 50)) if rejected.size else None,
        "p99_503_ms": float(np.percentile(rejected, 99)) if rejected.size else None,
        "other_errors": {str(c): len(v) for c, v in over["latencies"].items() if c not in (200, 503)}
        | over["transport_errors"],
        "server_503_within_50ms": server_side, "rss_idle_mib": rss_idle, "rss_peak_mib": max(peak),
        "exit_status": overload_exit,
    }
    result = {
        "started": started, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                        "python": platform.python_version(), "loadavg_start": load_start,
                                        "loadavg_end": os.getloadavg()},
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "image": args.image.name, "duration_s": args.duration, "baselines": base, "levels": runs,
        "rss": {"requests": args.rss_requests, "before_mib": rss_before, "after_mib": rss_after,
                "growth_pct": 100 * (rss_after - rss_before) / rss_before, "errors": rss_run["errors"]},
        "overload": overload_result, "exit_status": exit_status,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = render(result)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)


def render(r: dict[str, Any]) -> str:
    """The results as a Markdown report with the issue's targets checked."""
    base = r["baselines"]
    lines = [f"# `camr serve` load benchmark ({r['started']})", "",
             f"Model `{r['model']}`, image `{r['image']}`, {r['duration_s']:g} s per level, client and server on "
             f"the same {r['machine']['cpus']}-CPU machine (load average at start "
             f"{r['machine']['loadavg_start'][0]:.2f}, end {r['machine']['loadavg_end'][0]:.2f}).", "",
             f"In-process: `engine.explain` p50 **{base['explain_p50_ms']:.2f} ms**, "
             f"`iter_explain` **{base['iter_explain_rps']:.0f} images/s**.", "",
             "| concurrency | requests | throughput (req/s) | p50 ms | p95 ms | p99 ms | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for level in r["levels"]:
        lines.append(f"| {level['concurrency']} | {level['requests']} | {level['throughput_rps']:.0f} | "
                     f"{level['p50_ms']:.2f} | {level['p95_ms']:.2f} | {level['p99_ms']:.2f} | {level['errors']} |")
    o, rss = r["overload"], r["rss"]
    p99_503 = f"{o['p99_503_ms']:.1f}" if o["p99_503_ms"] is not None else "n/a"
    p50_503 = f"{o['p50_503_ms']:.1f}" if o["p50_503_ms"] is not None else "n/a"
    lines += ["", f"RSS over {rss['requests']} requests: {rss['before_mib']:.1f} → {rss['after_mib']:.1f} MiB "
              f"({rss['growth_pct']:+.2f} %), {rss['errors']} errors.", "",
              f"Overload (concurrency {o['concurrency']}, queue {o['queue']}, {r['duration_s']:g} s): "
              f"{o['ok']} answered ({o['ok_rps']:.0f} req/s, p99 {o['ok_p99_ms']:.1f} ms), "
              f"{o['rejected_503']} × 503 (p50 {p50_503} ms, p99 {p99_503} ms), other errors {o['other_errors']}; "
              f"RSS {o['rss_idle_mib']:.1f} MiB idle, {o['rss_peak_mib']:.1f} MiB peak. Server-side (its own latency "
              f"histogram): {100 * (o['server_503_within_50ms'] or 0):.1f} % of the 503s answered within 50 ms.", ""]
    by_level = {level["concurrency"]: level for level in r["levels"]}
    checks = []
    if 1 in by_level:
        ratio = by_level[1]["p50_ms"] / base["explain_p50_ms"]
        checks.append(("p50 at concurrency 1 ≤ 1.3× in-process explain", f"{ratio:.2f}×", ratio <= 1.3))
    if 32 in by_level:
        ratio = by_level[32]["throughput_rps"] / base["iter_explain_rps"]
        checks.append(("throughput at 32 ≥ 0.8× iter_explain", f"{ratio:.2f}×", ratio >= 0.8))
    errors = sum(level["errors"] for level in r["levels"]) + rss["errors"]
    checks.append(("0 errors below overload", str(errors), errors == 0))
    checks.append(("p99 of a 503 < 50 ms", p99_503, o["p99_503_ms"] is not None and o["p99_503_ms"] < 50))
    checks.append(("RSS growth ≤ 5 % over the RSS requests", f"{rss['growth_pct']:+.2f} %", rss["growth_pct"] <= 5))
    checks.append(("SIGTERM exit status 0", f"{r['exit_status']}, {o['exit_status']}",
                   r["exit_status"] == 0 and o["exit_status"] == 0))
    lines += ["| target | measured | met |", "|---|---:|:---:|"]
    lines += [f"| {name} | {value} | {'yes' if ok else 'NO'} |" for name, value, ok in checks]
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
