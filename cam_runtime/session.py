"""The model's onnxruntime session: options, creation, graph checks, guarded runs (watchdog, output checks), IOBinding.

Every run goes through :meth:`ModelSession.fetch` with its own ``RunOptions``: a watchdog thread sets
``terminate`` when the per-run time limit passes (a graph with a ``Loop`` that never ends cannot hang a run), and a
Ctrl-C in the main thread terminates the run in flight instead of waiting for it.
"""

from __future__ import annotations

import heapq
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from . import device_maps as dm
from .errors import GraphMismatchError, InvalidArgumentError, ModelRunError, RunTimeoutError
from .heads import GraphHead, Head
from .model import Manifest
from .providers import CUDA, import_onnxruntime
from .targets import check_top_k

DEFAULT_RUN_TIMEOUT_S = 600.0
"""Default per-run time limit (one batch through the model); generous: a hang, not a slow model, is the target."""


def default_threads() -> int:
    """The cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def session_options(ort: Any, *, threads: int | None = None, spinning: bool = False) -> Any:
    """onnxruntime SessionOptions as the runtime uses them: full graph optimisation, bounded intra-op threads."""
    if threads is not None and threads < 1:
        raise InvalidArgumentError(f"threads must be ≥ 1, got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_session(ort: Any, model: str | bytes, options: Any, providers: Sequence[Any], name: str) -> Any:
    """An InferenceSession, or GraphMismatchError with onnxruntime's first line when the graph cannot load."""
    try:
        return ort.InferenceSession(model, sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise GraphMismatchError(f"onnxruntime cannot load {name}: "
                                 f"{str(exc).strip().splitlines()[0][:300]}") from None

T = TypeVar("T")
_WAIT_SLICE_S = 0.2
"""How long the main thread blocks at most before it looks for a pending Ctrl-C."""


class Watchdog:
    """One daemon thread that sets ``terminate`` on the RunOptions of runs past their deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadlines: list[tuple[float, int]] = []
        self._active: dict[int, tuple[int, Any]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, run_options: Any, limit_s: float | None) -> Iterator[int]:
        """Register a run for the time it is inside the block; yields its id (for :meth:`terminate_all`)."""
        key = next(self._ids)
        with self._cond:
            self._active[key] = (threading.get_ident(), run_options)
            if limit_s is not None:
                deadline = (_now() + limit_s, key)
                # Wake the watchdog only when it must wait less than it does now (one context switch saved a run).
                earliest = not self._deadlines or deadline < self._deadlines[0]
                heapq.heappush(self._deadlines, deadline)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="cam-run-watchdog", daemon=True)
                    self._thread.start()
                if earliest:
                    self._cond.notify()
        try:
            yield key
        finally:
            with self._cond:
                self._active.pop(key, None)
                if len(self._deadlines) > 2 * len(self._active) + 64:  # finished runs' deadlines: drop them
                    self._deadlines = [d for d in self._deadlines if d[1] in self._active]
                    heapq.heapify(self._deadlines)

    def terminate(self, threads: set[int] | None = None) -> None:
        """Stop the runs in flight on ``threads`` (thread idents; None: every run), e.g. on Ctrl-C."""
        with self._cond:
            for owner, run_options in self._active.values():
                if threads is None or owner in threads:
                    run_options.terminate = True

    def _loop(self) -> None:
        with self._cond:
            while True:
                while self._deadlines and self._deadlines[0][1] not in self._active:
                    heapq.heappop(self._deadlines)  # finished in time
                if not self._deadlines:
                    self._cond.wait()
                    continue
                deadline, key = self._deadlines[0]
                wait = deadline - _now()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._deadlines)
                self._active[key][1].terminate = True


_now = time.monotonic


WATCHDOG = Watchdog()
"""The process's watchdog (one thread, started on the first guarded run)."""


class InterruptListener:
    """Stops the main thread's runs on SIGINT while they run inline (no thread hop per run).

    Python runs signal handlers in the main thread between bytecodes, so a KeyboardInterrupt cannot reach a
    thread inside ``session.run``; but the interpreter's C-level handler writes the signal number to the
    wakeup fd at once. While armed, that fd is one end of a socket pair whose other end a daemon thread
    reads: on SIGINT it sets ``terminate`` on the main thread's runs, the run returns, and the interpreter
    then raises the KeyboardInterrupt as usual.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._write_fd = -1
        self._main = threading.main_thread().ident
        if hasattr(os, "register_at_fork"):  # a forked child has no listener thread: it starts its own
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._write_fd = -1
        self._main = threading.main_thread().ident

    def arm(self) -> bool:
        """Route signals to the listener for one run (main thread only; the caller gives the fd back with
        ``signal.set_wakeup_fd(-1)``); False where it cannot (use the thread hop)."""
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return False  # the application's own handler decides what Ctrl-C means: leave it in charge
        if self._write_fd < 0 and not self._start():
            return False
        try:
            previous = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            return False
        if previous not in (-1, self._write_fd):  # someone else's (an event loop's): give it back, use the hop
            signal.set_wakeup_fd(previous)
            return False
        return True

    def _start(self) -> bool:
        with self._lock:
            if self._write_fd >= 0:
                return True
            try:
                reader, writer = socket.socketpair()
                writer.setblocking(False)
            except OSError:
                return False
            self._sockets = (reader, writer)  # kept alive for the process
            threading.Thread(target=self._listen, args=(reader,), name="cam-run-interrupts", daemon=True).start()
            self._write_fd = writer.fileno()
            return True

    def _listen(self, reader: socket.socket) -> None:
        while True:
            try:
                data = reader.recv(64)
            except InterruptedError:
                continue
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data:
                WATCHDOG.terminate({self._main} if self._main is not None else None)


def wait_interruptibly(future: Future[T]) -> T:
    """``future.result()`` that a Ctrl-C always interrupts.

    The kernel may deliver SIGINT to any thread (the main thread only gets first pick when it has no other signal
    pending); Python then only flags it, and a main thread blocked without a timeout never looks at the flag. A
    short timed wait returns to the interpreter, which raises the KeyboardInterrupt.
    """
    while True:
        try:
            return future.result(timeout=_WAIT_SLICE_S)
        except FutureTimeoutError:
            continue


INTERRUPTS = InterruptListener()
"""The process's SIGINT listener for inline main-thread runs (its thread starts on the first armed run)."""


class ModelSession:
    """One model graph in onnxruntime, checked against its manifest; ``run`` is thread-safe."""

    def __init__(self, session: Any, manifest: Manifest, *, device_maps: bool = False, io_binding: bool = False,
                 run_timeout: float | None = DEFAULT_RUN_TIMEOUT_S) -> None:
        if run_timeout is not None and not run_timeout > 0:
            raise InvalidArgumentError(f"run_timeout must be > 0 seconds or None, got {run_timeout}")
        self.session = session
        self.manifest = manifest
        self.device_maps = device_maps
        self.io_binding = io_binding
        self.run_timeout = run_timeout
        """Seconds one run may take before it is stopped (None: no limit)."""
        self.output_names = [manifest.outputs.probabilities, manifest.outputs.features]
        self.binding_device = ("cpu", 0)
        if session.get_providers() and session.get_providers()[0] == CUDA:
            options = session.get_provider_options().get(CUDA, {})
            self.binding_device = ("cuda", int(options.get("device_id", 0)))
        self._main_runner: ThreadPoolExecutor | None = None
        self._runner_lock = threading.Lock()

    @property
    def providers(self) -> list[str]:
        """The providers the session actually runs on, preferred first."""
        return list(self.session.get_providers())

    def input_shape(self) -> tuple[int, int, int]:
        """One input tensor's shape (without the batch axis) in the graph's layout."""
        spec = self.manifest.input
        return (3, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, 3)

    def validate(self, head: Head, num_channels: int, is_linear: bool) -> None:
        """Check the graph's inputs and outputs against the manifest and the head (GraphMismatchError)."""
        session, manifest = self.session, self.manifest
        inputs = [i for i in session.get_inputs() if not (self.device_maps and i.name == dm.TOP_K)]
        spec = manifest.input
        if len(inputs) != 1 or inputs[0].name != spec.name:
            raise GraphMismatchError(f"expected one input named {spec.name!r}, graph has {[i.name for i in inputs]}")
        if inputs[0].type != "tensor(float)":
            raise GraphMismatchError(f"input {spec.name!r} has type {inputs[0].type}; the runtime feeds float32 "
                                     "(tensor(float))")
        shape = inputs[0].shape
        expected = self.input_shape()
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)):
            raise GraphMismatchError(f"input {spec.name!r} has shape {shape}, manifest implies [N, "
                                     f"{', '.join(map(str, expected))}] ({spec.layout})")
        outputs = {o.name: o.shape for o in session.get_outputs()}
        types = {o.name: o.type for o in session.get_outputs()}
        for name in self.output_names:
            if name not in outputs:
                raise GraphMismatchError(f"output {name!r} missing; graph outputs are {sorted(outputs)}")
            if types[name] not in ("tensor(float)", "tensor(float16)", "tensor(double)"):
                raise GraphMismatchError(f"output {name!r} has type {types[name]}; expected a float tensor")
        probs_shape = outputs[manifest.outputs.probabilities]
        if len(probs_shape) != 2 or (isinstance(probs_shape[1], int) and probs_shape[1] != manifest.num_classes):
            raise GraphMismatchError(f"probabilities output has shape {probs_shape}, expected [N, "
                                     f"{manifest.num_classes}]")
        feat_shape = outputs[manifest.outputs.features]
        channel_axis = 1 if manifest.outputs.features_layout == "NCHW" else 3
        channels = num_channels or (head.channels if isinstance(head, GraphHead) else 0)
        source = "the rows of the dense weights" if is_linear else "the head graph's input"
        if len(feat_shape) != 4 or (isinstance(feat_shape[channel_axis], int) and channels
                                    and feat_shape[channel_axis] != channels):
            raise GraphMismatchError(f"features output has shape {feat_shape}, expected 4-D with "
                                     f"{channels} channels ({source})")
        if isinstance(head, GraphHead):
            spatial = [feat_shape[2], feat_shape[3]] if channel_axis == 1 else [feat_shape[1], feat_shape[2]]
            for got, want in zip(spatial, head.feature_shape[:2], strict=True):
                if isinstance(got, int) and want and got != want:
                    raise GraphMismatchError(f"features output has shape {feat_shape} but the head graph expects "
                                             f"(h, w, C) = {head.feature_shape}")
        if self.device_maps:
            missing = {dm.MAPS, dm.CLASSES} - set(outputs)
            if missing:
                raise GraphMismatchError(f"device_maps: outputs {sorted(missing)} missing from the session's graph")

    # --- guarded runs --------------------------------------------------------------------------------

    def fetch(self, names: list[str], batch: npt.NDArray[np.float32],
              extra: dict[str, npt.NDArray[Any]] | None = None) -> list[npt.NDArray[Any]]:
        """The named outputs for one batch, through ``session.run`` or IOBinding (same values either way).

        The run is stopped after :attr:`run_timeout` seconds (RunTimeoutError). In the main thread a Ctrl-C
        (KeyboardInterrupt) stops it instead of waiting for it: the run goes on inline while
        :data:`INTERRUPTS` listens for SIGINT, or on a helper thread where the listener cannot be armed (another
        wakeup fd in use, e.g. asyncio's, or a SIGINT handler of the application's own).
        """
        if threading.current_thread() is not threading.main_thread():
            return self._guarded(names, batch, extra)
        if INTERRUPTS.arm():
            try:
                return self._guarded(names, batch, extra)
            finally:
                # Called directly, not through a Python method: a pending KeyboardInterrupt is raised at the next
                # Python frame, and must not be raised before the wakeup fd is given back.
                signal.set_wakeup_fd(-1)
        with self._runner_lock:
            if self._main_runner is None:
                self._main_runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cam-run")
        runner: set[int] = set()

        def call() -> list[npt.NDArray[Any]]:
            runner.add(threading.get_ident())
            return self._guarded(names, batch, extra)

        future: Future[list[npt.NDArray[Any]]] = self._main_runner.submit(call)
        try:
            return wait_interruptibly(future)
        except BaseException:
            if not future.done():  # KeyboardInterrupt or SystemExit while the run is in flight
                WATCHDOG.terminate(runner)
            raise

    def _guarded(self, names: list[str], batch: npt.NDArray[np.float32],
                 extra: dict[str, npt.NDArray[Any]] | None) -> list[npt.NDArray[Any]]:
        ort = import_onnxruntime()
        run_options = ort.RunOptions()
        run_options.log_severity_level = 4  # a failed or stopped run is reported by the error raised here, once
        with WATCHDOG.guard(run_options, self.run_timeout):
            try:
                return self._fetch(names, batch, extra, run_options)
            except Exception as exc:  # onnxruntime's own exception types
                if run_options.terminate:
                    if self.run_timeout is not None:
                        raise RunTimeoutError(self.run_timeout) from None
                    raise ModelRunError("stopped (interrupted)") from None
                raise ModelRunError(str(exc).strip().splitlines()[0][:300] if str(exc).strip()
                                    else type(exc).__name__) from None

    def _fetch(self, names: list[str], batch: npt.NDArray[np.float32], extra: dict[str, npt.NDArray[Any]] | None,
               run_options: Any) -> list[npt.NDArray[Any]]:
        extra = dict(extra or {})
        if self.device_maps:  # the extended graph's k input must be fed even when its outputs are not fetched
            extra.setdefault(dm.TOP_K, dm.top_k_feed(1))
        feeds = {self.manifest.input.name: batch, **extra}
        if not self.io_binding:
            return list(self.session.run(names, feeds, run_options))
        ort = import_onnxruntime()
        device, device_id = self.binding_device
        binding = self.session.io_binding()
        # The batch goes to the device once, as one OrtValue; small extra feeds (TopK's k) stay on the host,
        # where onnxruntime's kernels read them anyway.
        binding.bind_ortvalue_input(self.manifest.input.name, ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(batch, dtype=np.float32), device, device_id))
        for name, value in extra.items():
            binding.bind_cpu_input(name, value)
        for name in names:  # allocated by onnxruntime on the session's device; unbound outputs never reach the host
            binding.bind_output(name, device, device_id)
        self.session.run_with_iobinding(binding, run_options)
        return list(binding.copy_outputs_to_cpu())

    # --- what the engine asks for --------------------------------------------------------------------

    def run(self, batch: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Model on a preprocessed batch → (probabilities [N, K], features [N, h, w, C] in NHWC), shapes checked."""
        probs, features = self.fetch(self.output_names, batch)
        n, k = batch.shape[0], self.manifest.num_classes
        if np.shape(probs) != (n, k):
            raise ModelRunError(f"probabilities have shape {list(np.shape(probs))} for a batch of {n}, "
                                f"expected [{n}, {k}]")
        if np.ndim(features) != 4 or np.shape(features)[0] != n or 0 in np.shape(features):
            raise ModelRunError(f"features have shape {list(np.shape(features))} for a batch of {n}, "
                                "expected 4-D with one non-empty map per image")
        if self.manifest.outputs.features_layout == "NCHW":
            features = nchw_to_nhwc(np.asarray(features, dtype=np.float32))
        return (np.asarray(probs, dtype=np.float32),
                np.ascontiguousarray(features, dtype=np.float32))

    def predict_probabilities(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities only, for forward-only methods and metrics (masked passes, deletion curves)."""
        (probs,) = self.fetch([self.manifest.outputs.probabilities], batch)
        if np.shape(probs) != (batch.shape[0], self.manifest.num_classes):
            raise ModelRunError(f"probabilities have shape {list(np.shape(probs))} for a batch of {batch.shape[0]}")
        return np.asarray(probs, dtype=np.float32)

    def run_device_maps(self, batch: npt.NDArray[np.float32], top_k: int = 1) -> dm.DeviceMaps:
        """Probabilities and the CAMs of the top-k classes, computed on the session's device (``device_maps``)."""
        if not self.device_maps:
            raise InvalidArgumentError("this engine was loaded without device_maps")
        check_top_k(top_k, self.manifest.num_classes)
        probs, maps, classes = self.fetch([self.manifest.outputs.probabilities, dm.MAPS, dm.CLASSES], batch,
                                          {dm.TOP_K: dm.top_k_feed(top_k)})
        n = batch.shape[0]
        if np.shape(probs)[:1] != (n,) or np.shape(maps)[:2] != (n, top_k) or np.shape(classes) != (n, top_k):
            raise ModelRunError(f"device maps have shapes {list(np.shape(maps))}, {list(np.shape(classes))} for a "
                                f"batch of {n} and k = {top_k}")
        return dm.DeviceMaps(np.asarray(probs, dtype=np.float32), np.asarray(classes, dtype=np.intp),
                             np.ascontiguousarray(maps, dtype=np.float32))


def nchw_to_nhwc(features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """[N, C, h, w] → contiguous [N, h, w, C]: cv2.transpose per image, ~5x faster than NumPy's strided copy."""
    import cv2

    n, c, h, w = features.shape
    source = np.ascontiguousarray(features)
    out = np.empty((n, h, w, c), dtype=np.float32)
    for i in range(n):
        cv2.transpose(source[i].reshape(c, h * w), out[i].reshape(h * w, c))
    return out
