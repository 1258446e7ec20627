"""cam_runtime.session: options, graph checks, guarded runs (watchdog, Ctrl-C, output checks)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from cam_runtime.engine import CamEngine
from cam_runtime.errors import GraphMismatchError, ModelRunError, RunTimeoutError
from cam_runtime.model import Manifest
from cam_runtime.results import ExplainResult, ImageFailure
from cam_runtime.session import ModelSession, create_session, default_threads, session_options


def endless_loop_model(manifest: Manifest, channels: int) -> bytes:
    """A graph with the manifest's input and output names whose only work is a Loop that never ends."""
    spec = manifest.input
    shape = [None, 3, spec.height, spec.width] if spec.layout == "NCHW" else [None, spec.height, spec.width, 3]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    nodes = [
        helper.make_node("ReduceSum", [spec.name], ["total"], keepdims=0),
        helper.make_node("Loop", ["", "true", "total"], ["final"], body=body),  # no trip count, cond stays true
        helper.make_node("Reshape", ["final", "shape2"], [manifest.outputs.probabilities]),
        helper.make_node("Reshape", ["final", "shape4"], [manifest.outputs.features]),
    ]
    graph = helper.make_graph(
        nodes, "endless", [helper.make_tensor_value_info(spec.name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(manifest.outputs.probabilities, TensorProto.FLOAT, [None, None]),
         helper.make_tensor_value_info(manifest.outputs.features, TensorProto.FLOAT, [None, None, None, None])],
        [helper.make_tensor("true", TensorProto.BOOL, [], [True]),
         # Shapes onnxruntime infers at load time: the manifest's K and C (the Loop never lets them run).
         helper.make_tensor("shape2", TensorProto.INT64, [2], [1, manifest.num_classes]),
         helper.make_tensor("shape4", TensorProto.INT64, [4], [1, 1, 1, channels])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def engine(tiny_nhwc: Path) -> CamEngine:
    return CamEngine.load(tiny_nhwc, device="cpu", threads=1)


@pytest.fixture(scope="module")
def endless(engine: CamEngine) -> Any:
    """An onnxruntime session of the never-ending graph, loaded directly (no allowlist involved)."""
    model = endless_loop_model(engine.manifest, engine.folder.num_channels)
    return create_session(ort, model, session_options(ort, threads=1), ["CPUExecutionProvider"], "endless.onnx")


def zeros(engine: CamEngine, n: int = 1) -> np.ndarray:
    return np.zeros((n, *engine.model_session.input_shape()), np.float32)


def ctrl_c_stops(call: Any) -> float:
    """Send this process SIGINT after 0.5 s, check ``call`` ends with KeyboardInterrupt; the seconds it took."""
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        call()
    return time.monotonic() - start

def test_default_threads_is_the_usable_cores() -> None:
    assert default_threads() == len(os.sched_getaffinity(0))
    assert session_options(ort, threads=3).intra_op_num_threads == 3
    assert session_options(ort).intra_op_num_threads == default_threads()


def test_unloadable_graph_is_one_line_error() -> None:
    with pytest.raises(GraphMismatchError, match=r"cannot load broken\.onnx"):
        create_session(ort, b"not an onnx graph", session_options(ort), ["CPUExecutionProvider"], "broken.onnx")


def test_watchdog_stops_a_run_that_never_ends(engine: CamEngine, endless: Any) -> None:
    session = ModelSession(endless, engine.manifest, run_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(RunTimeoutError, match=r"stopped after 0\.5 s"):
        session.run(zeros(engine))
    assert time.monotonic() - start < 10


def test_run_timeout_must_be_positive(engine: CamEngine) -> None:
    with pytest.raises(ValueError, match="run_timeout"):
        ModelSession(engine.session, engine.manifest, run_timeout=0)


def test_ctrl_c_stops_a_run_without_a_time_limit(engine: CamEngine, endless: Any) -> None:
    session = ModelSession(endless, engine.manifest, run_timeout=None)
    assert ctrl_c_stops(lambda: session.run(zeros(engine))) < 10
    assert session._main_runner is None  # it ran inline in the main thread, stopped through the SIGINT listener
    assert signal.set_wakeup_fd(-1) == -1  # and the wakeup fd was given back
    probs, _ = ModelSession(engine.session, engine.manifest).run(zeros(engine))
    assert probs.shape == (1, engine.num_classes)


class RecordingSession:
    """A session stand-in that records which thread ran each run."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.threads: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def run(self, names: list[str], feeds: dict[str, np.ndarray], options: Any = None) -> list[np.ndarray]:
        self.threads.append(threading.get_ident())
        return list(self.real.run(names, feeds, options))


def test_main_thread_runs_inline_without_a_helper_thread(engine: CamEngine) -> None:
    recording = RecordingSession(engine.session)
    session = ModelSession(recording, engine.manifest)
    session.run(zeros(engine))
    assert recording.threads == [threading.main_thread().ident]
    assert session._main_runner is None
    assert signal.set_wakeup_fd(-1) == -1


def test_application_sigint_handler_keeps_the_helper_thread(engine: CamEngine, endless: Any) -> None:
    calls: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        calls.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        recording = RecordingSession(engine.session)
        ModelSession(recording, engine.manifest).run(zeros(engine))
        assert recording.threads and recording.threads[0] != threading.main_thread().ident
        session = ModelSession(endless, engine.manifest, run_timeout=None)
        assert ctrl_c_stops(lambda: session.run(zeros(engine))) < 10 and calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_foreign_wakeup_fd_is_left_alone(engine: CamEngine) -> None:
    import socket

    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno())
    try:
        recording = RecordingSession(engine.session)
        ModelSession(recording, engine.manifest).run(zeros(engine))
        assert recording.threads and recording.threads[0] != threading.main_thread().ident  # the thread hop
        assert signal.set_wakeup_fd(writer.fileno()) == writer.fileno()  # still the application's
    finally:
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()


def test_explain_over_a_hanging_graph_ends_with_failed_rows(engine: CamEngine, endless: Any,
                                                             photo_arrays: dict[str, np.ndarray]) -> None:
    hanging = CamEngine(engine.folder, endless, run_timeout=0.5)
    start = time.monotonic()
    out = list(hanging.iter_explain(list(photo_arrays.values())[:3], batch_size=2))
    assert time.monotonic() - start < 20
    assert [type(o) for o in out] == [ImageFailure] * 3
    assert all(o.error_type == "RunTimeoutError" and "0.5 s" in o.error for o in out if isinstance(o, ImageFailure))


class WrongShapes:
    """A session stand-in whose outputs have the wrong batch size (a graph that only works at batch 1)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def run(self, names: list[str], feeds: dict[str, np.ndarray], options: Any = None) -> list[np.ndarray]:
        batch = next(iter(feeds.values()))
        out = self.real.run(names, feeds, options)
        return [o[:1] for o in out] if len(batch) > 1 else out


def test_output_shapes_are_checked_per_run(engine: CamEngine) -> None:
    session = ModelSession(WrongShapes(engine.session), engine.manifest)
    probs, features = session.run(zeros(engine, 1))
    assert probs.shape == (1, engine.num_classes) and features.shape[0] == 1
    with pytest.raises(ModelRunError, match=r"probabilities have shape \[1, 5\] for a batch of 3"):
        session.run(zeros(engine, 3))
    with pytest.raises(ModelRunError, match="for a batch of 3"):
        session.predict_probabilities(zeros(engine, 3))


def test_batch1_only_graph_is_retried_image_by_image(tiny_nhwc: Path, photo_arrays: dict[str, np.ndarray]) -> None:
    reference = CamEngine.load(tiny_nhwc, device="cpu", threads=1)
    flaky = CamEngine.load(tiny_nhwc, device="cpu", threads=1)
    flaky.session = WrongShapes(flaky.session)
    images = list(photo_arrays.values())[:4]
    got = list(flaky.iter_explain(images, batch_size=4))
    want = reference.explain(images, batch_size=4)
    assert all(isinstance(g, ExplainResult) for g in got)
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, ExplainResult)
        np.testing.assert_allclose(g.targets[0].raw, w.targets[0].raw, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_its_own_interrupt_listener(engine: CamEngine, endless: Any) -> None:
    from cam_runtime.session import INTERRUPTS

    ModelSession(engine.session, engine.manifest).run(zeros(engine))  # the parent's listener is running
    assert INTERRUPTS._write_fd >= 0
    pid = os.fork()
    if pid == 0:  # the child: Ctrl-C must still stop an endless run inline
        code = 1
        try:
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
            try:
                ModelSession(endless, engine.manifest, run_timeout=None).run(zeros(engine))
            except KeyboardInterrupt:
                code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's run was not stopped by Ctrl-C")
