"""``camr serve`` as a real uvicorn process on a loopback port: every route, micro-batching, bad bodies, limits,
token auth, overload, timeout, CORS, SIGTERM draining, and the web page in headless Chromium."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need httpx (pip install httpx)")
pytest.importorskip("fastapi", reason="camr serve needs the serve extra: pip install '.[serve]'")
pytest.importorskip("uvicorn", reason="camr serve needs the serve extra: pip install '.[serve]'")

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "fixtures" / "shapes"
PHOTO = REPO / "cam_runtime" / "data" / "examples" / "cat.jpg"
SHAPE = REPO / "models" / "fixtures" / "shapes-test" / "images" / "0000_star.png"
TOKEN = "s3cret-token-for-tests"
MAX_BODY = 2_000_000
MAX_PIXELS = 4_000_000


class Server:
    """A ``camr serve`` subprocess on a free loopback port (uvicorn picks it: --port 0)."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.log = tmp / "server.log"
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cam_runtime", "serve", "-m", str(MODEL), "--port", "0", *args],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        match = None
        while match is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
            match = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", self.log.read_text())
        self.url = f"http://127.0.0.1:{match.group(1)}"

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The main server: a token, small body and pixel limits, a long batching wait."""
    tmp = tmp_path_factory.mktemp("serve")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    srv = Server(tmp, "--token-file", str(token_file), "--max-body-bytes", str(MAX_BODY),
                 "--max-pixels", str(MAX_PIXELS), "--max-wait-ms", "50", "--max-batch", "32")
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def engine():  # type: ignore[no-untyped-def]
    from cam_runtime import CamEngine

    return CamEngine.load(MODEL)


def assert_error(response: httpx.Response, status: int, fragment: str = "") -> str:
    """A one-line JSON ``{"error": ...}`` with the status; returns the message."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    assert "\n" not in response.text.strip()
    body = response.json()
    assert set(body) == {"error"} and body["error"], body
    assert fragment.lower() in body["error"].lower(), body
    return str(body["error"])


def assert_serving(client: httpx.Client) -> None:
    """The server still answers a good request correctly."""
    response = client.post("/v1/models/shapes/explain", content=SHAPE.read_bytes(),
                           headers={"content-type": "image/png"}, params={"images": "none"})
    assert response.status_code == 200, response.text
    assert response.json()["top_k"][0]["label"] == "star"


def b64(path: Path | bytes) -> str:
    data = path.read_bytes() if isinstance(path, Path) else path
    return base64.b64encode(data).decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.split(" ")[0]
            if head.split("{")[0] == name:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- routes -------------------------------------------------------------------------------------------------


def test_probes_docs_and_model_routes(server: Server, client: httpx.Client) -> None:
    bare = httpx.get(f"{server.url}/healthz")
    assert bare.status_code == 200 and bare.json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert client.get("/v1/models").json() == {"models": ["shapes"]}
    info = client.get("/v1/models/shapes").json()
    assert info["ready"] is True and info["labels"] == ["circle", "square", "triangle", "cross", "star"]
    assert info["input"] == {"height": 48, "width": 48, "layout": "NHWC"}
    spec = httpx.get(f"{server.url}/openapi.json").json()
    for path in ("/v1/models", "/v1/models/{name}", "/v1/models/{name}:predict", "/v1/models/{name}:explain",
                 "/v1/models/{name}/explain", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path
    assert "swagger" in httpx.get(f"{server.url}/docs").text.lower()
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert "access-control-allow-origin" not in bare.headers  # CORS off by default


def test_plain_explain_matches_the_in_process_engine(client: httpx.Client, engine) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/v1/models/shapes/explain", content=PHOTO.read_bytes(),
                           headers={"content-type": "image/jpeg"},
                           params={"method": "gradcam", "top_k": 2, "images": "both", "format": "jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    (expected,) = engine.explain(PHOTO, method="gradcam", top_k=2)
    assert [p["class_id"] for p in body["top_k"]] == [p.class_id for p in expected.top_k]
    assert np.allclose([p["probability"] for p in body["top_k"]], [p.probability for p in expected.top_k],
                       atol=1e-6)
    assert (body["width"], body["height"], body["method"]) == (451, 300, "gradcam")
    assert body["image_format"] == "image/jpeg"
    for target, want in zip(body["targets"], expected.targets, strict=True):
        assert np.allclose(np.asarray(target["map"]), want.raw, atol=1e-5)
        for key in ("overlay", "heatmap"):
            image = cv2.imdecode(np.frombuffer(base64.b64decode(target[key]), np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (300, 451, 3)


def test_plain_explain_returns_images_and_takes_multipart(client: httpx.Client, engine) -> None:  # type: ignore[no-untyped-def]
    overlay = client.post("/v1/models/shapes/explain", params={"return": "overlay", "boxes": "false"},
                          files={"file": ("cat.jpg", PHOTO.read_bytes(), "image/jpeg")})
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    decoded = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
    (expected,) = engine.explain(PHOTO)
    assert np.array_equal(decoded, expected.overlay(draw_boxes=False, channel_order="BGR"))  # PNG is lossless
    heat = client.post("/v1/models/shapes/explain", params={"return": "heatmap", "format": "jpeg"},
                       content=PHOTO.read_bytes(), headers={"content-type": "application/octet-stream"})
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(heat.content, np.uint8), cv2.IMREAD_COLOR).shape == (300, 451, 3)
    by_class = client.post("/v1/models/shapes/explain", params={"classes": "circle,3", "images": "none"},
                           files={"file": ("s.png", SHAPE.read_bytes(), "image/png")}).json()
    assert [t["class_id"] for t in by_class["targets"]] == [0, 3] and by_class["source"] == "s.png"


def test_kserve_predict_and_explain(client: httpx.Client, engine) -> None:  # type: ignore[no-untyped-def]
    body = {"instances": [{"b64": b64(PHOTO)}, {"b64": b64(SHAPE)}], "parameters": {"top_k": 3}}
    predictions = client.post("/v1/models/shapes:predict", json=body).json()["predictions"]
    expected = engine.explain([PHOTO, SHAPE], top_k=3)
    assert [p["class_id"] for p in predictions] == [r.top_k[0].class_id for r in expected]
    assert [len(p["top_k"]) for p in predictions] == [3, 3]
    assert "map" not in predictions[0]
    explanations = client.post("/v1/models/shapes:explain", json=body).json()["explanations"]
    assert len(explanations) == 2 and len(explanations[1]["targets"]) == 3
    assert np.allclose(np.asarray(explanations[1]["targets"][0]["map"]), expected[1].targets[0].raw, atol=1e-5)
    assert "overlay" not in explanations[0]["targets"][0]  # KServe answers carry maps, images only on request
    plain_string = client.post("/v1/models/shapes:predict", json={"instances": [b64(SHAPE)]})
    assert plain_string.json()["predictions"][0]["label"] == "star"


# --- micro-batching -------------------------------------------------------------------------------------------


def test_concurrent_requests_share_session_runs(client: httpx.Client) -> None:
    before = client.get("/metrics").text
    runs0 = metric(before, "camr_batch_size_count", model="shapes")
    images0 = metric(before, "camr_batch_size_sum", model="shapes")
    data = PHOTO.read_bytes()
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda _: client.post("/v1/models/shapes/explain", content=data,
                                                    headers={"content-type": "image/jpeg"},
                                                    params={"images": "none", "maps": "false"}).status_code,
                              range(48)))
    assert codes == [200] * 48
    after = client.get("/metrics").text
    runs = metric(after, "camr_batch_size_count", model="shapes") - runs0
    images = metric(after, "camr_batch_size_sum", model="shapes") - images0
    assert images == 48
    assert runs < 48, f"48 concurrent requests took {runs} session runs: no batching"
    assert metric(after, "camr_request_duration_seconds_count", route="/v1/models/{name}/explain",
                  method="POST", code="200") >= 48
    assert "camr_queue_depth" in after and "camr_failures_total" in after


# --- bad bodies and limits --------------------------------------------------------------------------------------


def bomb_png(side: int) -> bytes:
    """A valid, tiny PNG that decodes to side × side pixels (a decompression bomb for the pixel limit)."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side) for _ in range(side)), 9)
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (len(payload).to_bytes(4, "big") + kind + payload
                + zlib.crc32(kind + payload).to_bytes(4, "big"))
    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_bad_bodies_get_one_line_errors_and_the_server_goes_on(client: httpx.Client) -> None:
    explain, kserve = "/v1/models/shapes/explain", "/v1/models/shapes:explain"
    png = {"content-type": "image/png"}
    bomb = bomb_png(4000)
    assert len(bomb) < 100_000
    cases = [
        (client.post(kserve, json={"instances": [{"b64": "not base64 at all!"}]}), 400, "invalid base64"),
        (client.post(kserve, content=b'{"instances": [', headers={"content-type": "application/json"}), 400,
         "not valid JSON"),
        (client.post(kserve, content=b"[" * 100_000 + b"]" * 100_000, headers={"content-type": "application/json"}),
         400, "JSON"),
        (client.post(kserve, json={"images": []}), 400, "instances"),
        (client.post(explain, content=SHAPE.read_bytes()[:60], headers=png), 400, "cannot decode"),
        (client.post(explain, content=PHOTO.read_bytes()[:3000], headers={"content-type": "image/jpeg"}), 400,
         "corrupt or truncated"),
        (client.post(explain, content=b"hello", headers=png), 400, "not an image"),
        (client.post(explain, content=bomb, headers=png), 422, "above the limit"),
        (client.post(kserve, json={"instances": [{"b64": b64(bomb)}]}), 422, "above the limit"),
        (client.post(kserve, content=b" " * (MAX_BODY + 1), headers={"content-type": "application/json"}), 413,
         "larger than the limit"),
        (client.post(explain, content=iter([b"\x89PNG" + b"\0" * 500_000] * 5), headers=png), 413,
         "larger than the limit"),  # chunked: no Content-Length to refuse it by
        (client.post(explain, content=b"x", headers={"content-type": "text/plain"}), 415, "content type"),
        (client.post(kserve, content=b"{}", headers={"content-type": "text/plain"}), 415, "content type"),
        (client.post(explain, files={"other": ("a.png", SHAPE.read_bytes(), "image/png")}), 400, "'file'"),
        (client.post(explain, content=SHAPE.read_bytes(), headers=png, params={"method": "magic"}), 422,
         "unknown CAM method"),
        (client.post(explain, content=SHAPE.read_bytes(), headers=png, params={"classes": "dog"}), 422,
         "unknown target class"),
        (client.post(explain, content=SHAPE.read_bytes(), headers=png, params={"top_k": "99"}), 422, "top_k"),
        (client.post(explain, content=SHAPE.read_bytes(), headers=png, params={"path": "/etc/passwd"}), 422,
         "unknown parameter"),
        (client.post("/v1/models/nope/explain", content=SHAPE.read_bytes(), headers=png), 404, "unknown model"),
        (client.get("/no/such/route"), 404, "not found"),
        (client.get(explain), 405, "not allowed"),
    ]
    for response, status, fragment in cases:
        assert_error(response, status, fragment)
    assert_serving(client)
    failures = client.get("/metrics").text
    assert metric(failures, "camr_failures_total", reason="ImageTooLargeError") >= 2
    assert metric(failures, "camr_failures_total", reason="RequestTooLargeError") >= 2


def test_bearer_token(server: Server, client: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/models/shapes:predict")):
            response = httpx.request(method, server.url + path, headers=headers, json={"instances": []})
            assert_error(response, 401, "bearer token")
            assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert client.get("/v1/models").status_code == 200


# --- overload, timeout, CORS, SIGTERM -------------------------------------------------------------------------


def big_jpeg() -> bytes:
    photo = cv2.imread(str(PHOTO))
    ok, data = cv2.imencode(".jpg", cv2.resize(photo, (1800, 1200)))
    assert ok
    return data.tobytes()


def test_overload_answers_503_at_once_and_sigterm_drains(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--queue-size", "2", "--max-batch", "1")
    try:
        data = big_jpeg()
        with httpx.Client(base_url=srv.url, timeout=60, limits=httpx.Limits(max_connections=64)) as c:
            def post(_: int) -> tuple[int, float, httpx.Response]:
                start = time.perf_counter()
                r = c.post("/v1/models/shapes/explain", content=data, headers={"content-type": "image/jpeg"},
                           params={"images": "none", "maps": "false"})
                return r.status_code, time.perf_counter() - start, r

            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                results = list(pool.map(post, range(64)))
            codes = [code for code, _, _ in results]
            assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 2, codes
            for code, _, response in results:
                if code == 503:
                    assert_error(response, 503, "overloaded")
                    assert response.headers["retry-after"] == "1"
            assert c.get("/healthz").status_code == 200
            # Drain: requests in flight when SIGTERM arrives still get their answers.
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                pending = [pool.submit(post, i) for i in range(2)]
                time.sleep(0.05)
                srv.process.send_signal(signal.SIGTERM)
                drained = [f.result()[0] for f in pending]
        assert srv.process.wait(timeout=30) == 0, srv.log.read_text()
        assert drained == [200, 200], drained
        assert "Application shutdown complete" in srv.log.read_text()
    finally:
        srv.stop()


def test_timeout_and_cors(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--timeout", "0.01", "--cors-origin", "http://page.example")
    try:
        response = httpx.post(f"{srv.url}/v1/models/shapes/explain", content=big_jpeg(),
                              headers={"content-type": "image/jpeg", "origin": "http://page.example"}, timeout=60)
        assert_error(response, 504, "not answered within 0.01 s")
        assert response.headers["access-control-allow-origin"] == "http://page.example"
        other = httpx.get(f"{srv.url}/healthz", headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        assert httpx.get(f"{srv.url}/readyz").status_code == 200
    finally:
        assert srv.stop() == 0


def test_missing_token_file_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "cam_runtime", "serve", "-m", str(MODEL), "--token-file",
                             str(tmp_path / "absent")], capture_output=True, env=env, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.decode().strip().count("\n") == 0 and "--token-file" in result.stderr.decode()


# --- the web page in a real browser ------------------------------------------------------------------------------


def test_web_page_uploads_a_photo_and_shows_overlays(server: Server, client: httpx.Client,
                                                      tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("needs Debian's chromium and chromium-driver packages (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.execute_script("document.getElementById('token').dispatchEvent(new Event('change'))")
        WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
        browser.find_element(By.ID, "file").send_keys(str(PHOTO))
        loaded = ("return [...document.querySelectorAll('img.heat')]"
                  ".filter(i => i.complete && i.naturalWidth === 451 && i.naturalHeight === 300).length")
        WebDriverWait(browser, 30).until(lambda b: b.execute_script(loaded) == 3)
        rows = browser.find_elements(By.CSS_SELECTOR, "#topk-table tbody tr")
        assert len(rows) == 3 and "%" in rows[0].text
        assert "cam on 451×300" in browser.find_element(By.ID, "status").text
        explains = metric(client.get("/metrics").text, "camr_request_duration_seconds_count",
                          route="/v1/models/{name}/explain", method="POST", code="200")
        browser.execute_script("const a = document.getElementById('alpha'); a.value = '0.8';"
                               "a.dispatchEvent(new Event('input'))")
        assert browser.execute_script("return document.querySelector('img.heat').style.opacity") == "0.8"
        screenshot = tmp_path / "serve-page.png"
        browser.save_screenshot(str(screenshot))
        shot = cv2.imread(str(screenshot))
        assert shot is not None and shot.shape[0] > 100
        print(f"screenshot: {screenshot}")
        assert metric(client.get("/metrics").text, "camr_request_duration_seconds_count",
                      route="/v1/models/{name}/explain", method="POST", code="200") == explains  # opacity: no request
        browser.execute_script("const m = document.getElementById('method'); m.value = 'gradcam';"
                               "m.dispatchEvent(new Event('change'))")
        WebDriverWait(browser, 30).until(
            lambda b: "gradcam on" in b.find_element(By.ID, "status").text)
    finally:
        browser.quit()


def test_json_error_body_is_parseable_for_every_status() -> None:
    from cam_runtime.serve.limits import error_body

    assert json.loads(error_body("two\nlines  here")) == {"error": "two lines here"}
