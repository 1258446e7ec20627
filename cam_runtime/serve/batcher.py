"""Micro-batching: requests admitted on the event loop, one worker thread running them in shared session runs.

The queue is a thread-safe ``queue.Queue`` (an ``asyncio.Queue`` cannot be read from a thread): the event loop
puts without blocking, the worker blocks on it, and results go back through ``loop.call_soon_threadsafe``.
Admission is bounded separately (``queue_size`` requests between admission and answer), so a full server
answers 503 before it reads or decodes a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cam_runtime.boxes import check_box_threshold
from cam_runtime.defaults import BOX_THRESHOLD
from cam_runtime.engine import CamEngine
from cam_runtime.errors import InvalidArgumentError, NotReadyError, OverloadedError
from cam_runtime.imaging import DecodedImage
from cam_runtime.methods import get_method
from cam_runtime.results import ExplainResult

BatchObserver = Callable[[int, float], None]
"""Called after each session run with (images in the run, seconds it took)."""


@dataclass(frozen=True)
class ExplainParams:
    """What the engine computes for a request; requests with equal params share one engine call."""

    method: str = "cam"
    top_k: int = 1
    classes: tuple[str, ...] | None = None
    box_threshold: float = BOX_THRESHOLD
    all_boxes: bool = False
    score: str = "logit"

    def validate(self, engine: CamEngine) -> None:
        """Raise the engine's own errors (unknown method or class, top_k out of range) before any work."""
        get_method(self.method, **({"score": self.score} if self.score != "logit" else {}))
        check_box_threshold(self.box_threshold, "box_threshold")
        engine.classes.check_classes(self.classes, self.top_k)


@dataclass
class Ticket:
    """One admitted request's place in the server."""

    submitted: bool = False


@dataclass
class _Job:
    images: list[DecodedImage]
    params: ExplainParams
    future: asyncio.Future[list[ExplainResult]]
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Runs the requests of one engine in batches of up to ``max_batch`` images on one worker thread."""

    def __init__(self, engine: CamEngine, *, max_batch: int = 16, max_wait_ms: float = 5.0, queue_size: int = 64,
                 observer: BatchObserver | None = None) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._observer = observer
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._admitted = 0  # event-loop thread only
        self._on_the_way = 0  # admitted, not yet submitted (reading / decoding); read by the worker
        self._carry: _Job | None = None  # worker thread only
        self._accepting = False
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._work, name="camr-batcher", daemon=True)
        self._thread.start()
        self._accepting = True

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish every queued job, then stop the worker."""
        self._accepting = False
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    @property
    def ready(self) -> bool:
        """True while the worker runs and new work is accepted."""
        return self._accepting and self._thread is not None and self._thread.is_alive()

    @property
    def admitted(self) -> int:
        """Requests between admission and answer."""
        return self._admitted

    @property
    def queued(self) -> int:
        """Requests waiting for the worker."""
        return self._queue.qsize()

    # --- event-loop side ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def admission(self) -> Iterator[Ticket]:
        """Hold one of the ``queue_size`` places for a request, or raise OverloadedError at once."""
        if not self.ready:
            raise NotReadyError("server is not ready (starting or draining)")
        if self._admitted >= self.queue_size:
            raise OverloadedError(self.queue_size)
        self._admitted += 1
        self._on_the_way += 1
        ticket = Ticket()
        try:
            yield ticket
        finally:
            self._admitted -= 1
            if not ticket.submitted:
                self._on_the_way -= 1

    async def submit(self, ticket: Ticket, images: Sequence[DecodedImage],
                     params: ExplainParams) -> list[ExplainResult]:
        """Queue the decoded images of an admitted request and wait for their results."""
        if ticket.submitted:
            raise InvalidArgumentError("a request is submitted once")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[ExplainResult]] = loop.create_future()
        ticket.submitted = True
        self._on_the_way -= 1
        self._queue.put_nowait(_Job(list(images), params, future, loop))
        return await future

    # --- worker side -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._run(batch)

    def _collect(self) -> list[_Job] | None:
        """The next batch: whatever is queued up to ``max_batch`` images, waiting up to ``max_wait`` only
        while other admitted requests are still being read or decoded (so a lone request never waits)."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is None:
            return None
        batch, count = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait_s
        while count < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if self._on_the_way <= 0 or remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=min(remaining, 0.002))
                except queue.Empty:
                    continue
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            if count + len(job.images) > self.max_batch:
                self._carry = job  # starts the next batch
                break
            batch.append(job)
            count += len(job.images)
        return batch

    def _run(self, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.future.cancelled()]  # timed-out requests are dropped
        groups: dict[ExplainParams, list[_Job]] = {}
        for job in live:
            groups.setdefault(job.params, []).append(job)
        for params, jobs in groups.items():
            images = [image for job in jobs for image in job.images]
            start = time.perf_counter()
            try:
                results = self.engine.explain(
                    [image.bgr for image in images], method=params.method, top_k=params.top_k,
                    classes=list(params.classes) if params.classes is not None else None,
                    batch_size=max(len(images), 1), box_threshold=params.box_threshold,
                    all_boxes=params.all_boxes, score=params.score, array_order="BGR")
            except Exception as exc:  # one bad group must not stop the worker; its requests get the error
                for job in jobs:
                    _resolve(job, None, exc)
                continue
            if self._observer is not None:
                self._observer(len(images), time.perf_counter() - start)
            offset = 0
            for job in jobs:
                part = results[offset:offset + len(job.images)]
                for result, image in zip(part, job.images, strict=True):
                    result.source = image.source
                offset += len(job.images)
                _resolve(job, part, None)


def _resolve(job: _Job, value: Any, error: BaseException | None) -> None:
    def apply() -> None:
        if job.future.done():  # cancelled by its timeout meanwhile
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        job.loop.call_soon_threadsafe(apply)
