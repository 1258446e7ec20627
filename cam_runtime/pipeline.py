"""The explain pipeline over typed batches: decode (within a pixel budget) → run the model → targets → maps → results.

Stages exchange dataclasses, not tuples: :class:`Decoded` (one image and its tensor), :class:`Batch` (the images of
one batch and the failures among them, in input order) and :class:`Inferred` (a batch after the model). A batch
whose run fails is retried image by image, so a bad image (or a graph that only works at batch 1) becomes failed
rows with the reason, never a run without outputs. Decoded pixels held at once are bounded across the batch being
finished and the one being prefetched (``pixel_budget``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from . import device_maps as dm
from .boxes import boxes_from_map
from .errors import CamError, ModelRunError, RunTimeoutError
from .heads import Head
from .imaging import AlphaMode, ChannelOrder, DecodedImage, ImageInput, describe_source
from .maps import heatmap_at
from .methods import CamMethod, ForwardRunner, HeadInputs
from .preprocess import Preprocessor
from .results import ExplainResult, ImageFailure, Prediction, TargetMap
from .session import WATCHDOG, wait_interruptibly
from .targets import ClassIndex, TargetRequest, top_k_ids

FloatArray = npt.NDArray[np.float32]


class ModelRunner(Protocol):
    """What the pipeline runs the model through (the engine, or a :class:`~cam_runtime.session.ModelSession`)."""

    def run(self, batch: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(probabilities [N, K], features [N, h, w, C])."""

    def predict_probabilities(self, batch: FloatArray) -> FloatArray:
        """Probabilities [N, K]."""

    def run_device_maps(self, batch: FloatArray, top_k: int = 1) -> dm.DeviceMaps:
        """Probabilities and top-k CAMs computed on the device."""


@dataclass
class Decoded:
    """One decoded input: its position in the input order, the image, its model tensor, stage timings (ms)."""

    position: int
    image: DecodedImage
    tensor: FloatArray
    timings: dict[str, float]

    @property
    def pixels(self) -> int:
        """Decoded pixels held for this image."""
        return self.image.width * self.image.height


@dataclass
class Batch:
    """The items of one batch in input order: decoded images and failures (keyed by position)."""

    images: list[Decoded] = field(default_factory=list)
    failures: dict[int, ImageFailure] = field(default_factory=dict)

    @property
    def pixels(self) -> int:
        """Decoded pixels held by this batch."""
        return sum(d.pixels for d in self.images)

    def __len__(self) -> int:
        return len(self.images) + len(self.failures)


@dataclass
class Inferred:
    """A batch after the model: inputs, probabilities and features (or device maps) of its good images."""

    batch: Batch
    inputs: FloatArray
    probabilities: FloatArray
    features: FloatArray | None
    device_maps: dm.DeviceMaps | None
    inference_ms: float


@dataclass(frozen=True)
class ExplainRequest:
    """One call's options, validated: method, targets, boxes, decoding, error policy."""

    method: CamMethod
    targets: TargetRequest
    box_threshold: float
    all_boxes: bool
    alpha_mode: AlphaMode = "drop"
    array_order: ChannelOrder = "RGB"
    raise_errors: bool = False
    batch_size: int = 16
    device_k: int | None = None
    """Top-k maps computed on the device (the method's ``from_device_cams``), or None for the NumPy path."""


class BatchDecoder:
    """Decodes inputs into batches of at most ``batch_size`` images and ``pixel_cap`` decoded pixels.

    An image that does not fit waits (decoded) for the next batch, so a batch never holds more than the cap
    (an image larger than the cap goes alone).
    """

    def __init__(self, images: Iterable[ImageInput], request: ExplainRequest,
                 load: Callable[..., DecodedImage], preprocessor: Preprocessor, pixel_cap: int | None) -> None:
        self._inputs = enumerate(images)
        self._request = request
        self._load = load
        self._preprocessor = preprocessor
        self._cap = pixel_cap
        self._carry: Decoded | None = None
        self._done = False

    def next_batch(self) -> Batch | None:
        """The next batch, or None when the inputs are exhausted."""
        batch = Batch()
        pixels = 0
        if self._carry is not None:
            batch.images.append(self._carry)
            pixels, self._carry = self._carry.pixels, None
        size = self._request.batch_size
        # Images are preprocessed straight into the rows of one batch tensor, which then goes to the model as
        # it is (see Pipeline.infer): no stacking copy. Batch 1 needs no buffer (the tensor gets a batch axis).
        rows = np.empty((size, *self._preprocessor.shape), np.float32) if size > 1 and not self._done else None
        while not self._done and len(batch) < size:
            try:
                position, image = next(self._inputs)
            except StopIteration:
                self._done = True
                break
            item = self._decode(position, image, None if rows is None else rows[len(batch.images)])
            if isinstance(item, ImageFailure):
                batch.failures[position] = item
                continue
            if self._cap is not None and batch.images and pixels + item.pixels > self._cap:
                self._carry = item
                break
            batch.images.append(item)
            pixels += item.pixels
        return batch if len(batch) else None

    def _decode(self, position: int, image: ImageInput,
                out: FloatArray | None = None) -> Decoded | ImageFailure:
        source = describe_source(image, position)
        start = time.perf_counter()
        try:
            decoded = self._load(image, source=source, alpha=self._request.alpha_mode,
                                 array_order=self._request.array_order)
            mid = time.perf_counter()
            tensor = self._preprocessor.tensor(decoded.bgr, out=out)
        except CamError as exc:
            if self._request.raise_errors:
                raise
            return ImageFailure(source, str(exc), type(exc).__name__)
        end = time.perf_counter()
        return Decoded(position, decoded, tensor, {"decode": (mid - start) * 1e3, "preprocess": (end - mid) * 1e3})


class Pipeline:
    """Runs :class:`ExplainRequest` over a stream of inputs with one model session, head and class index."""

    def __init__(self, model: ModelRunner, head: Head, index: ClassIndex, weights: FloatArray | None,
                 layout: str, input_shape: tuple[int, int, int]) -> None:
        self.model = model
        self.head = head
        self.index = index
        self.weights = weights
        self.layout = layout
        self.input_shape = input_shape

    def stream(self, decoder: BatchDecoder, request: ExplainRequest,
               prefetch: bool) -> Iterator[ExplainResult | ImageFailure]:
        """Results in input order; with ``prefetch`` a worker decodes and runs batch i+1 while i is finished."""
        if not prefetch:
            while (batch := decoder.next_batch()) is not None:
                yield from self.finish(self.infer(batch, request), request)
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cam-pipeline")
        workers: set[int] = set()
        try:
            def step() -> Inferred | None:
                workers.add(threading.get_ident())
                batch = decoder.next_batch()
                return None if batch is None else self.infer(batch, request)

            pending: Future[Inferred | None] = pool.submit(step)
            while (inferred := wait_interruptibly(pending)) is not None:
                pending = pool.submit(step)
                yield from self.finish(inferred, request)
        except BaseException:
            # Ctrl-C, a closed generator, an error: stop this stream's run in flight rather than wait for it.
            WATCHDOG.terminate(workers)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # --- the model ---------------------------------------------------------------------------------------

    def infer(self, batch: Batch, request: ExplainRequest) -> Inferred:
        """Run the model on a batch; a failing batch is retried image by image, bad images become failures."""
        inputs = batch_tensor([d.tensor for d in batch.images], self.input_shape)
        start = time.perf_counter()
        try:
            probs, features, maps = self._run(inputs, request.device_k)
        except ModelRunError as exc:
            if request.raise_errors or isinstance(exc, RunTimeoutError) or len(batch.images) <= 1:
                if request.raise_errors:
                    raise
                return self._fail_all(batch, inputs, exc)
            return self._one_by_one(batch, request)
        elapsed = (time.perf_counter() - start) * 1e3
        return self._check_finite(Inferred(batch, inputs, probs, features, maps,
                                           elapsed / max(1, len(batch.images))), request)

    def _run(self, inputs: FloatArray, device_k: int | None) -> tuple[
            FloatArray, FloatArray | None, dm.DeviceMaps | None]:
        if len(inputs) == 0:
            return np.zeros((0, self.index.num_classes), np.float32), None, None
        if device_k is not None:
            maps = self.model.run_device_maps(inputs, device_k)
            return maps.probabilities, None, maps
        probs, features = self.model.run(inputs)
        return probs, features, None

    def _fail_all(self, batch: Batch, inputs: FloatArray, exc: CamError) -> Inferred:
        for item in batch.images:
            batch.failures[item.position] = ImageFailure(item.image.source, str(exc), type(exc).__name__)
        batch.images = []
        return Inferred(batch, inputs[:0], np.zeros((0, self.index.num_classes), np.float32), None, None, 0.0)

    def _one_by_one(self, batch: Batch, request: ExplainRequest) -> Inferred:
        parts = [self.infer(Batch([item]), request) for item in batch.images]
        good = [p for p in parts if p.batch.images]
        for part in parts:
            batch.failures.update(part.batch.failures)
        batch.images = [p.batch.images[0] for p in good]
        if not good:
            return self._fail_all(batch, np.zeros((0, *self.input_shape), np.float32),
                                  ModelRunError("no image"))
        maps = None
        if request.device_k is not None:
            parts_maps = [p.device_maps for p in good if p.device_maps is not None]
            maps = dm.DeviceMaps(np.concatenate([m.probabilities for m in parts_maps]),
                                 np.concatenate([m.classes for m in parts_maps]),
                                 np.concatenate([m.maps for m in parts_maps]))
        features = None if request.device_k is not None else np.concatenate(
            [p.features for p in good if p.features is not None])
        return Inferred(batch, np.concatenate([p.inputs for p in good]),
                        np.concatenate([p.probabilities for p in good]), features, maps,
                        sum(p.inference_ms for p in good) / len(good))

    def _check_finite(self, inferred: Inferred, request: ExplainRequest) -> Inferred:
        """Images whose probabilities or features are not finite become failures (the others go on)."""
        n = len(inferred.batch.images)
        if n == 0:
            return inferred
        arrays = [a for a in (inferred.probabilities, inferred.features,
                              None if inferred.device_maps is None else inferred.device_maps.maps) if a is not None]
        if all(np.isfinite(a).all() for a in arrays):  # the usual case: one pass per array, no per-row reduction
            return inferred
        ok: npt.NDArray[np.bool_] = np.ones(n, dtype=bool)
        for a in arrays:
            ok &= np.isfinite(a).reshape(n, -1).all(axis=1)
        reason = "the model's outputs for this image are not finite (NaN or inf)"
        if request.raise_errors:
            raise ModelRunError(reason)
        for item, good in zip(inferred.batch.images, ok, strict=True):
            if not good:
                inferred.batch.failures[item.position] = ImageFailure(item.image.source, reason, "ModelRunError")
        keep = np.flatnonzero(ok)
        inferred.batch.images = [inferred.batch.images[i] for i in keep]
        maps = inferred.device_maps
        return Inferred(inferred.batch, inferred.inputs[keep], inferred.probabilities[keep],
                        None if inferred.features is None else inferred.features[keep],
                        None if maps is None else dm.DeviceMaps(maps.probabilities[keep], maps.classes[keep],
                                                                maps.maps[keep]),
                        inferred.inference_ms)

    # --- maps and results --------------------------------------------------------------------------------

    def finish(self, inferred: Inferred, request: ExplainRequest) -> Iterator[ExplainResult | ImageFailure]:
        """Targets, maps, heatmaps, boxes and results of one batch, failures in their input positions."""
        batch = inferred.batch
        outputs: dict[int, ExplainResult | ImageFailure] = dict(batch.failures)
        if batch.images:
            try:
                outputs.update(self._results(inferred, request))
            except ModelRunError as exc:
                if request.raise_errors:
                    raise
                for item in batch.images:
                    outputs[item.position] = ImageFailure(item.image.source, str(exc), type(exc).__name__)
        for position in sorted(outputs):
            yield outputs[position]

    def _results(self, inferred: Inferred, request: ExplainRequest) -> dict[int, ExplainResult | ImageFailure]:
        images = inferred.batch.images
        probs = inferred.probabilities
        positions = [d.position for d in images]
        labels_override: list[list[str]] | None = None
        start = time.perf_counter()
        if inferred.device_maps is not None:
            transform = request.method.from_device_cams()
            assert transform is not None
            targets = inferred.device_maps.classes
            raw_maps = transform(inferred.device_maps.maps)
        else:
            assert inferred.features is not None
            features = inferred.features
            logits = self.head.logits(features) if request.targets.has_objects else None
            resolved = request.targets.resolve(self.index, probs, positions, logits)
            targets, labels_override = resolved.ids, resolved.labels
            model = (ForwardRunner(inferred.inputs, self.layout, self.model.predict_probabilities)
                     if request.method.needs_model else None)
            head = HeadInputs(features, probs, self.weights, targets, resolved.directions, resolved.fixed_score,
                              head=self.head, model=model)
            raw_maps = request.method.maps(head)
        shared_ms = (time.perf_counter() - start) * 1e3 / len(images)
        top_k = request.targets.top_k
        order = top_k_ids(probs, max(top_k, targets.shape[1]))
        labels = self.index.labels
        finite: npt.NDArray[np.bool_] = np.asarray(np.isfinite(raw_maps).reshape(len(images), -1).all(axis=1))
        out: dict[int, ExplainResult | ImageFailure] = {}
        for row, item in enumerate(images):
            if not finite[row]:
                reason = f"the {request.method.name} maps of this image are not finite (NaN or inf)"
                if request.raise_errors:
                    raise ModelRunError(reason)
                out[item.position] = ImageFailure(item.image.source, reason, "ModelRunError")
                continue
            start = time.perf_counter()
            image = item.image
            target_maps = []
            for t, class_id in enumerate(targets[row]):
                heatmap = heatmap_at(raw_maps[row, t], image.height, image.width)
                target_maps.append(TargetMap(
                    class_id=int(class_id),
                    label=labels_override[row][t] if labels_override else labels[class_id],
                    probability=float(probs[row, class_id]),
                    raw=raw_maps[row, t], heatmap=heatmap,
                    boxes=boxes_from_map(heatmap, request.box_threshold, request.all_boxes)))
            maps_ms = shared_ms + (time.perf_counter() - start) * 1e3
            top = [Prediction(int(c), labels[c], float(probs[row, c])) for c in order[row, :top_k]]
            out[item.position] = ExplainResult(
                source=image.source, image=image, method=request.method.name, top_k=top, targets=target_maps,
                timings_ms={**item.timings, "inference": inferred.inference_ms, "maps": maps_ms})
        return out


def batch_tensor(tensors: list[FloatArray], shape: tuple[int, int, int]) -> FloatArray:
    """The model input [N, *shape] of these image tensors: a view where they already are consecutive rows of
    one array (or there is one), else a stacked copy."""
    if not tensors:
        return np.zeros((0, *shape), np.float32)
    first = tensors[0]
    if len(tensors) == 1:
        return first[None]
    rows = first.base
    if (isinstance(rows, np.ndarray) and rows.ndim == first.ndim + 1 and rows.flags.c_contiguous
            and len(rows) >= len(tensors) and all(t.base is rows for t in tensors)):
        view = rows[:len(tensors)]
        row_bytes = first.nbytes
        start = view.__array_interface__["data"][0]
        if all(t.__array_interface__["data"][0] == start + i * row_bytes for i, t in enumerate(tensors)):
            return view
    return np.stack(tensors)


def pixel_cap(budget: int | None, prefetch: bool) -> int | None:
    """Pixels one batch may hold so that the batches alive at once (two with prefetch) stay within ``budget``."""
    if budget is None:
        return None
    return max(1, budget // 2) if prefetch else budget

