"""cam_runtime.pipeline: typed batches, the in-flight pixel budget, per-image failures, the method protocol."""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import pytest

from cam_runtime.engine import CamEngine
from cam_runtime.errors import ModelRunError
from cam_runtime.imaging import DecodedImage
from cam_runtime.methods import CamMethod, FloatArray, HeadInputs, get_method
from cam_runtime.pipeline import BatchDecoder, ExplainRequest, pixel_cap
from cam_runtime.results import ExplainResult, ImageFailure
from cam_runtime.session import create_session, session_options
from cam_runtime.targets import TargetRequest


@pytest.fixture(scope="module")
def engine(tiny_nhwc: Path) -> CamEngine:
    return CamEngine.load(tiny_nhwc, device="cpu", threads=1)


def request(batch_size: int = 4) -> ExplainRequest:
    return ExplainRequest(get_method("cam"), TargetRequest(1), 0.5, False, batch_size=batch_size)


def sized(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), 128, np.uint8)


def test_decoder_bounds_batches_by_pixels_and_keeps_input_order(engine: CamEngine) -> None:
    images: list[Any] = [sized(10, 10), sized(10, 10), b"not an image", sized(20, 20), sized(10, 10), sized(5, 5)]
    decoder = BatchDecoder(images, request(), engine.load_image, engine.preprocessor, pixel_cap=250)
    batches = []
    while (batch := decoder.next_batch()) is not None:
        batches.append(batch)
    # 100 + 100 fit; 400 does not (carried, then alone: larger than the cap); 100 + 25 fit.
    assert [[d.position for d in b.images] for b in batches] == [[0, 1], [3], [4, 5]]
    assert list(batches[0].failures) == [2] and batches[0].failures[2].error_type
    assert all(b.pixels <= 250 for b in batches if len(b.images) > 1)
    assert [len(b) for b in batches] == [3, 1, 2]


def test_pixel_cap_halves_the_budget_when_prefetching() -> None:
    assert pixel_cap(1000, prefetch=True) == 500
    assert pixel_cap(1000, prefetch=False) == 1000
    assert pixel_cap(None, prefetch=True) is None


def test_decoded_pixels_in_flight_stay_within_the_budget(tiny_nhwc: Path) -> None:
    """16 images exactly at the per-image limit: batch × prefetch no longer multiplies it."""
    side = 200
    limit = side * side
    engine = CamEngine.load(tiny_nhwc, device="cpu", threads=1, max_pixels=limit)
    assert engine.max_pixels_in_flight == 2 * limit
    alive = {"now": 0, "peak": 0}
    lock = threading.Lock()
    original = engine.load_image

    def counted(*args: Any, **kwargs: Any) -> DecodedImage:
        image = original(*args, **kwargs)
        pixels = image.width * image.height
        with lock:
            alive["now"] += pixels
            alive["peak"] = max(alive["peak"], alive["now"])
        weakref.finalize(image, lambda: alive.__setitem__("now", alive["now"] - pixels))
        return image

    engine.load_image = counted  # type: ignore[method-assign]
    images = [sized(side, side) for _ in range(16)]
    seen = 0
    for item in engine.iter_explain(images, batch_size=16):
        assert isinstance(item, ExplainResult)
        seen += 1
        del item
    assert seen == 16
    # The batch being finished, the one being prefetched (each ≤ budget / 2), one image carried over.
    assert alive["peak"] <= engine.max_pixels_in_flight + limit
    assert alive["peak"] < 16 * limit / 2


class NaNRow:
    """A session stand-in that makes the outputs of the second image of each batch NaN."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def run(self, names: list[str], feeds: dict[str, np.ndarray], options: Any = None) -> list[np.ndarray]:
        out = [np.array(o, copy=True) for o in self.real.run(names, feeds, options)]
        if len(out[0]) > 1:
            out[0][1] = np.nan
        return out


def test_non_finite_outputs_fail_only_their_image(tiny_nhwc: Path, photo_arrays: dict[str, np.ndarray]) -> None:
    engine = CamEngine.load(tiny_nhwc, device="cpu", threads=1)
    engine.session = NaNRow(engine.session)
    out = list(engine.iter_explain(list(photo_arrays.values())[:3], batch_size=3))
    assert [type(o) for o in out] == [ExplainResult, ImageFailure, ExplainResult]
    failure = out[1]
    assert isinstance(failure, ImageFailure) and "not finite" in failure.error
    with pytest.raises(ModelRunError, match="not finite"):
        engine.explain(list(photo_arrays.values())[:3], batch_size=3)


class Probe(CamMethod):
    """A method outside the library: the engine must serve it through the protocol alone."""

    name = "probe"
    needs_model: ClassVar[bool] = True
    seen: ClassVar[list[HeadInputs]] = []

    def maps(self, head: HeadInputs) -> FloatArray:
        Probe.seen.append(head)
        n, h, w, _ = head.features.shape
        return np.ones((n, head.classes.shape[1], h, w), np.float32)


def test_methods_get_the_model_only_when_they_declare_it(engine: CamEngine, photo_arrays: dict) -> None:
    image = photo_arrays["astronaut"]
    Probe.seen.clear()
    engine.explain(image, method=Probe())
    head = Probe.seen[0]
    assert head.model is not None
    np.testing.assert_allclose(head.model.predict(head.model.inputs), head.probabilities, rtol=1e-5, atol=1e-7)
    Probe.needs_model = False
    try:
        engine.explain(image, method=Probe())
        assert Probe.seen[1].model is None
    finally:
        Probe.needs_model = True


def test_device_map_forms_are_declared_by_the_methods() -> None:
    cams = np.array([[[[-1.0, 2.0], [3.0, -4.0]]]], np.float32)
    assert get_method("cam").from_device_cams() is not None
    np.testing.assert_array_equal(get_method("cam").from_device_cams()(cams), cams)  # type: ignore[misc]
    relu_mean = get_method("gradcam").from_device_cams()
    assert relu_mean is not None
    np.testing.assert_allclose(relu_mean(cams), np.maximum(cams, 0) / 4)
    assert get_method("gradcam", score="probability").from_device_cams() is None
    assert get_method("hirescam").from_device_cams() is not None
    assert all(get_method(m).from_device_cams() is None for m in ("xgradcam", "scorecam", "eigencam"))


@pytest.mark.parametrize("interrupt", ["sigint", "flag_from_another_thread"])
def test_ctrl_c_stops_a_prefetching_stream(engine: CamEngine, photo_arrays: dict, interrupt: str) -> None:
    # "flag_from_another_thread": the kernel may hand SIGINT to any thread, and Python then only flags it for the
    # main thread, which is blocked on the prefetch future (_thread.interrupt_main raises exactly that flag).
    import _thread

    from test_session import endless_loop_model

    endless = create_session(ort, endless_loop_model(engine.manifest, engine.folder.num_channels),
                             session_options(ort, threads=1), ["CPUExecutionProvider"], "endless.onnx")
    hanging = CamEngine(engine.folder, endless, run_timeout=None)
    send = (lambda: os.kill(os.getpid(), signal.SIGINT)) if interrupt == "sigint" else _thread.interrupt_main
    timer = threading.Timer(0.5, send)
    start = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        list(hanging.iter_explain([photo_arrays["astronaut"]] * 2, batch_size=1, prefetch=True))
    assert time.monotonic() - start < 10
