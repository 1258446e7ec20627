"""CamEngine: a verified model folder, one onnxruntime session, and the explain pipeline."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, Union, cast

import numpy as np
import numpy.typing as npt

from . import device_maps as dm
from .boxes import DEFAULT_THRESHOLD, boxes_from_map
from .errors import CamError, GraphMismatchError, HeadKindError, InvalidArgumentError, UnknownClassError
from .heads import GraphHead, Head, LinearHead
from .imaging import (
    DEFAULT_MAX_PIXELS,
    AlphaMode,
    ChannelOrder,
    DecodedImage,
    ImageInput,
    describe_source,
    load_image,
)
from .maps import heatmap_at
from .methods import CAM, CamMethod, FloatArray, GradCAM, HeadInputs, HiResCAM, ScoreCAM, get_method, relu
from .model import ModelFolder
from .preprocess import Preprocessor
from .providers import (
    CUDA,
    ProviderSpec,
    cuda_provider_options,
    import_onnxruntime,
    preload_cuda_libraries,
    provider_name,
    resolve_providers,
    warn_on_fallback,
)
from .results import ExplainResult, ImageFailure, Prediction, TargetMap
from .targets import ClassTarget, ResolvedTarget, Target
from .threads import limit_library_threads

if TYPE_CHECKING:
    from .video import VideoStream

ClassSpec = Union[int, str, Target]
OnOff = Union[bool, Literal["auto"]]
"""True, False, or "auto" (on when the session runs on CUDA)."""
Targets = Union[None, ClassSpec, Sequence[ClassSpec], Sequence[Sequence[ClassSpec]]]
"""None (top-k), one class, classes for every image, or one list of classes per image; a class is an id, a
label or a target object (:mod:`cam_runtime.targets`)."""


def default_threads() -> int:
    """The cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class CamEngine:
    """Explains images with a model folder; thread-safe (onnxruntime sessions allow concurrent ``run``)."""

    def __init__(self, folder: ModelFolder, session: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 resize: str | None = None, device_maps: bool = False, io_binding: bool = False,
                 head: Head | None = None) -> None:
        self.folder = folder
        self.manifest = folder.manifest
        self.session = session
        self.max_pixels = max_pixels
        self.preprocessor = Preprocessor(self.manifest.input, self.manifest.preprocess, resize)
        self._output_names = [self.manifest.outputs.probabilities, self.manifest.outputs.features]
        self._label_index: dict[str, list[int]] = {}
        for i, label in enumerate(folder.labels):
            self._label_index.setdefault(normalise_label(label), []).append(i)
        self.device_maps = device_maps
        """True when the session has the on-device CAM outputs (see :mod:`cam_runtime.device_maps`)."""
        self.head: Head = head if head is not None else LinearHead(folder.linear_weights("a linear head"),
                                                                   folder.bias)
        """What follows the features: the dense head (closed forms) or the folder's head graph."""
        self._validate_graph()
        if device_maps:
            missing = {dm.MAPS, dm.CLASSES} - {o.name for o in session.get_outputs()}
            if missing:
                raise GraphMismatchError(f"device_maps: outputs {sorted(missing)} missing from the session's graph")
        self.io_binding = io_binding
        """Run through onnxruntime IOBinding: input uploaded once, only the fetched outputs copied to the host."""
        self._binding_device = ("cpu", 0)
        if session.get_providers() and session.get_providers()[0] == CUDA:
            options = session.get_provider_options().get(CUDA, {})
            self._binding_device = ("cuda", int(options.get("device_id", 0)))

    # --- construction ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", threads: int | None = None,
             verify_checksums: bool = True, warmup: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
             resize: str | None = None, cuda_options: dict[str, Any] | None = None,
             library_threads: int | None = 1, spinning: bool = False, device_maps: OnOff = False,
             io_binding: OnOff = False, providers: Sequence[ProviderSpec] | None = None,
             trust_graph: bool = False) -> CamEngine:
        """Verify a model folder and create its session on ``device`` ("auto", "cpu", "cuda", "openvino"…).

        ``providers`` passes an onnxruntime provider list through instead (names or ``(name, options)``
        pairs, e.g. ``["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]``);
        every provider named must be available (see :mod:`cam_runtime.providers`).

        ``threads`` bounds onnxruntime's intra-op threads (default: the cores this process may use).
        ``library_threads`` sets OpenCV's and OpenBLAS's pools process-wide (default 1: the engine's image
        work runs on the calling and one pipeline thread, so onnxruntime's pool is the only one; None leaves
        them alone). ``spinning`` lets idle onnxruntime threads busy-wait: slightly lower batch-1 latency on
        an idle machine, but they then burn the cores that decoding and writing need.
        ``resize`` overrides the manifest's resize mode (e.g. "area" for better quality than Keras' nearest).
        ``cuda_options`` override :data:`cam_runtime.providers.DEFAULT_CUDA_OPTIONS` key by key.
        ``device_maps`` extends the graph in memory (needs ``onnx``) so that top-k CAMs are computed on the
        session's device and only maps and probabilities reach the host; ``io_binding`` runs through
        onnxruntime's IOBinding. Both take True, False or "auto" (on when the session runs on CUDA).
        ``trust_graph`` allows operators outside the CNN allowlist (loops, branches: :mod:`cam_runtime.model.graph`).
        """
        if threads is not None and threads < 1:
            raise InvalidArgumentError(f"threads must be ≥ 1, got {threads}")
        for name, value in (("device_maps", device_maps), ("io_binding", io_binding)):
            if value not in (True, False, "auto"):
                raise InvalidArgumentError(f"{name} must be True, False or 'auto', got {value!r}")
        folder = ModelFolder.load(path, verify_checksums=verify_checksums, trust_graph=trust_graph)
        ort = import_onnxruntime()
        session_providers = resolve_providers(device, cuda_provider_options(cuda_options), providers)
        on_cuda = provider_name(session_providers[0]) == CUDA
        if on_cuda:
            preload_cuda_libraries(ort)
        if device_maps is True and not folder.is_linear:
            raise HeadKindError("device_maps (CAM appended to the graph)")
        use_maps = device_maps is True or (device_maps == "auto" and on_cuda and folder.is_linear)
        model: str | bytes = str(folder.model_path)
        if use_maps:
            model = dm.extend_model(folder.model_path, folder.manifest, folder.linear_weights("device_maps"))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if library_threads is not None:
            limit_library_threads(library_threads)
        try:
            session = ort.InferenceSession(model, sess_options=options, providers=session_providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise GraphMismatchError(f"onnxruntime cannot load {folder.model_path.name}: "
                                     f"{str(exc).strip().splitlines()[0][:300]}") from None
        warn_on_fallback(session_providers, session.get_providers())
        head = None
        if folder.manifest.head is not None:
            sessions = []
            for role in ("head", "gradient"):
                try:
                    sessions.append(ort.InferenceSession(str(folder.path_of(role)), sess_options=options,
                                                         providers=session_providers))
                except Exception as exc:  # onnxruntime's own exception types for bad graphs
                    raise GraphMismatchError(f"onnxruntime cannot load {folder.path_of(role).name}: "
                                             f"{str(exc).strip().splitlines()[0][:300]}") from None
            head = GraphHead(sessions[0], sessions[1], folder.manifest.head, folder.manifest.outputs.features_layout,
                             folder.manifest.num_classes)
        engine = cls(folder, session, max_pixels=max_pixels, resize=resize, device_maps=use_maps,
                     io_binding=io_binding is True or (io_binding == "auto" and session.get_providers()[0] == CUDA),
                     head=head)
        if warmup:
            try:
                engine.warmup()
            except Exception as exc:  # a graph that loads but cannot run (bad shapes inside, unsupported op)
                raise GraphMismatchError(f"running {folder.model_path.name} on a zero batch failed: "
                                         f"{str(exc).strip().splitlines()[0][:300]}") from None
        return engine

    def _validate_graph(self) -> None:
        inputs = [i for i in self.session.get_inputs() if not (self.device_maps and i.name == dm.TOP_K)]
        spec = self.manifest.input
        if len(inputs) != 1 or inputs[0].name != spec.name:
            raise GraphMismatchError(f"expected one input named {spec.name!r}, graph has {[i.name for i in inputs]}")
        if inputs[0].type != "tensor(float)":
            raise GraphMismatchError(f"input {spec.name!r} has type {inputs[0].type}; the runtime feeds float32 "
                                     "(tensor(float))")
        shape = inputs[0].shape
        expected = (3, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, 3)
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)):
            raise GraphMismatchError(f"input {spec.name!r} has shape {shape}, manifest implies [N, "
                                     f"{', '.join(map(str, expected))}] ({spec.layout})")
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        for name in self._output_names:
            if name not in outputs:
                raise GraphMismatchError(f"output {name!r} missing; graph outputs are {sorted(outputs)}")
        types = {o.name: o.type for o in self.session.get_outputs()}
        for name in self._output_names:
            if types[name] not in ("tensor(float)", "tensor(float16)", "tensor(double)"):
                raise GraphMismatchError(f"output {name!r} has type {types[name]}; expected a float tensor")
        probs_shape = outputs[self.manifest.outputs.probabilities]
        if len(probs_shape) != 2 or (isinstance(probs_shape[1], int) and probs_shape[1] != self.manifest.num_classes):
            raise GraphMismatchError(f"probabilities output has shape {probs_shape}, expected [N, "
                                     f"{self.manifest.num_classes}]")
        feat_shape = outputs[self.manifest.outputs.features]
        channel_axis = 1 if self.manifest.outputs.features_layout == "NCHW" else 3
        channels = self.folder.num_channels or (self.head.channels if isinstance(self.head, GraphHead) else 0)
        source = "the rows of the dense weights" if self.folder.is_linear else "the head graph's input"
        if len(feat_shape) != 4 or (isinstance(feat_shape[channel_axis], int) and channels
                                    and feat_shape[channel_axis] != channels):
            raise GraphMismatchError(f"features output has shape {feat_shape}, expected 4-D with "
                                     f"{channels} channels ({source})")
        if isinstance(self.head, GraphHead):
            spatial = [feat_shape[2], feat_shape[3]] if channel_axis == 1 else [feat_shape[1], feat_shape[2]]
            for got, want in zip(spatial, self.head.feature_shape[:2], strict=True):
                if isinstance(got, int) and want and got != want:
                    raise GraphMismatchError(f"features output has shape {feat_shape} but the head graph expects "
                                             f"(h, w, C) = {self.head.feature_shape}")

    def warmup(self) -> None:
        """One run on a zero batch, so the first real image does not pay for lazy initialisation."""
        zeros = np.zeros((1, *self._input_shape()), dtype=np.float32)
        _, features = self.run(zeros)
        if isinstance(self.head, GraphHead):
            self.head.forward(features)
            self.head.logit_gradients(features, np.zeros((1, 1, self.num_classes), np.float32))
        if self.device_maps:
            self.run_device_maps(zeros, 1)

    def _input_shape(self) -> tuple[int, int, int]:
        spec = self.manifest.input
        return (3, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, 3)

    # --- properties ------------------------------------------------------------------------------------

    @property
    def labels(self) -> tuple[str, ...]:
        """Class labels (ids as text when the folder has no labels file)."""
        return self.folder.labels

    @property
    def num_classes(self) -> int:
        """K."""
        return self.manifest.num_classes

    @property
    def providers(self) -> list[str]:
        """The providers the session actually runs on, preferred first."""
        return list(self.session.get_providers())

    # --- inference -----------------------------------------------------------------------------------------

    def _fetch(self, names: list[str], batch: npt.NDArray[np.float32],
               extra: dict[str, npt.NDArray[Any]] | None = None) -> list[npt.NDArray[Any]]:
        """The named outputs for one batch, through ``session.run`` or IOBinding (same values either way)."""
        extra = dict(extra or {})
        if self.device_maps:  # the extended graph's k input must be fed even when its outputs are not fetched
            extra.setdefault(dm.TOP_K, dm.top_k_feed(1))
        feeds = {self.manifest.input.name: batch, **extra}
        if not self.io_binding:
            return list(self.session.run(names, feeds))
        ort = import_onnxruntime()
        device, device_id = self._binding_device
        binding = self.session.io_binding()
        # The batch goes to the device once, as one OrtValue; small extra feeds (TopK's k) stay on the host,
        # where onnxruntime's kernels read them anyway.
        binding.bind_ortvalue_input(self.manifest.input.name, ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(batch, dtype=np.float32), device, device_id))
        for name, value in extra.items():
            binding.bind_cpu_input(name, value)
        for name in names:  # allocated by onnxruntime on the session's device; unbound outputs never reach the host
            binding.bind_output(name, device, device_id)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def run(self, batch: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Model on a preprocessed batch → (probabilities [N, K], features [N, h, w, C] in NHWC)."""
        probs, features = self._fetch(self._output_names, batch)
        if self.manifest.outputs.features_layout == "NCHW":
            features = features.transpose(0, 2, 3, 1)
        return (np.asarray(probs, dtype=np.float32),
                np.ascontiguousarray(features, dtype=np.float32))

    def predict_probabilities(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities only, for forward-only methods and metrics (masked passes, deletion curves)."""
        (probs,) = self._fetch([self.manifest.outputs.probabilities], batch)
        return np.asarray(probs, dtype=np.float32)

    def run_device_maps(self, batch: npt.NDArray[np.float32], top_k: int = 1) -> dm.DeviceMaps:
        """Probabilities and the CAMs of the top-k classes, computed on the session's device (``device_maps``)."""
        if not self.device_maps:
            raise InvalidArgumentError("this engine was loaded without device_maps")
        if not 1 <= top_k <= self.num_classes:
            raise InvalidArgumentError(f"top_k must be in [1, {self.num_classes}], got {top_k}")
        probs, maps, classes = self._fetch([self.manifest.outputs.probabilities, dm.MAPS, dm.CLASSES], batch,
                                           {dm.TOP_K: dm.top_k_feed(top_k)})
        return dm.DeviceMaps(np.asarray(probs, dtype=np.float32), np.asarray(classes, dtype=np.intp),
                             np.ascontiguousarray(maps, dtype=np.float32))

    def device_map_transform(self, method: CamMethod, classes: Targets = None) -> Any:
        """How ``method``'s maps follow from device CAMs (a function), or None where the NumPy path is needed.

        CAM itself, and Grad-CAM / HiResCAM with score = logit, which equal ReLU(CAM)/(h·w) for a GAP head;
        only for top-k targets (``classes`` None).
        """
        if not self.device_maps or classes is not None or not self.head.linear:
            return None
        if type(method) is CAM:
            return _identity
        if type(method) in (GradCAM, HiResCAM) and cast("GradCAM", method).score == "logit":
            return _relu_mean
        return None

    def load_image(self, image: ImageInput, *, source: str | None = None, alpha: AlphaMode = "drop",
                   array_order: ChannelOrder = "RGB") -> DecodedImage:
        """Decode one input with this engine's pixel limit."""
        return load_image(image, source=source, max_pixels=self.max_pixels, alpha=alpha, array_order=array_order)

    # --- targets -----------------------------------------------------------------------------------------

    def class_id(self, target: ClassSpec) -> int:
        """A class id from an id or a label (case-insensitive); ambiguous labels must be given by id."""
        if isinstance(target, ClassTarget):
            return self.class_id(target.target)
        if isinstance(target, bool):
            raise UnknownClassError(target, "expected an int id or a label")
        if isinstance(target, int | np.integer):
            if not 0 <= int(target) < self.num_classes:
                raise UnknownClassError(target, f"id must be in [0, {self.num_classes - 1}]")
            return int(target)
        if isinstance(target, str):
            if target.strip().lstrip("-").isdigit():
                return self.class_id(int(target))
            ids = self._label_ids(target)
            if not ids:
                raise UnknownClassError(target, f"no such label{self._suggestion(target)}")
            if len(ids) > 1:
                raise UnknownClassError(target, f"label is ambiguous (ids {ids}); give the id instead")
            return ids[0]
        raise UnknownClassError(target, "expected an int id or a label")

    def _label_ids(self, target: str) -> list[int]:
        """Ids whose label matches ``target`` ignoring case and separators; "tabby, tabby cat" (a WordNet synonym
        list) matches when the parts that are labels all name the same class."""
        ids = self._label_index.get(normalise_label(target))
        if ids or "," not in target:
            return list(ids or [])
        found = {tuple(self._label_index[key]) for key in map(normalise_label, target.split(","))
                 if key in self._label_index}
        return list(found.pop()) if len(found) == 1 else []

    def _suggestion(self, target: str) -> str:
        import difflib

        close = difflib.get_close_matches(normalise_label(target), list(self._label_index), n=3, cutoff=0.75)
        if not close:
            return ""
        names = [self.labels[self._label_index[key][0]] for key in close]
        return f"; did you mean {' or '.join(repr(n) for n in names)}?"

    def resolve_targets(self, probabilities: npt.NDArray[np.float32], classes: Targets, top_k: int,
                        offset: int = 0, total: int | None = None) -> npt.NDArray[np.intp]:
        """Target class ids [N, T]: top-k by probability, or the given classes (shared or per image)."""
        if _has_target_objects(classes):
            return self._resolve_objects(probabilities, None, classes, offset, total)[0]
        n = probabilities.shape[0]
        if classes is None:
            if not 1 <= top_k <= self.num_classes:
                raise InvalidArgumentError(f"top_k must be in [1, {self.num_classes}], got {top_k}")
            return np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        if isinstance(classes, int | str | np.integer | Target):
            return np.full((n, 1), self.class_id(classes), dtype=np.intp)
        items = list(classes)
        if _are_rows(items):
            expected = total if total is not None else n
            if len(items) != expected:
                raise InvalidArgumentError(f"per-image classes: got {len(items)} lists for {expected} images")
            rows = [[self.class_id(c) for c in row] for row in items[offset:offset + n]]
            if len({len(r) for r in rows}) > 1 or any(not r for r in rows):
                raise InvalidArgumentError("per-image class lists must all have the same, non-zero length")
            return np.asarray(rows, dtype=np.intp).reshape(n, -1)
        if not items:
            raise InvalidArgumentError("classes must not be empty")
        # A list nested among plain classes is rejected by class_id ("expected an int id or a label").
        ids = [self.class_id(c) for c in cast("list[ClassSpec]", items)]
        return np.tile(np.asarray(ids, dtype=np.intp), (n, 1))

    def check_target(self, spec: ClassSpec) -> None:
        """Validate one class or target object before any image is decoded (labels exist, ranks fit)."""
        if isinstance(spec, Target) and not isinstance(spec, ClassTarget):
            spec.validate(self.class_id, self.num_classes)
        else:
            self.class_id(spec)

    def _resolve_objects(self, probabilities: npt.NDArray[np.float32], logits: npt.NDArray[np.float32] | None,
                         classes: Targets, offset: int = 0, total: int | None = None) -> tuple[
                             npt.NDArray[np.intp], npt.NDArray[np.float32], npt.NDArray[np.bool_], list[list[str]]]:
        """Targets that include target objects: ids [N, T], logit directions [N, T, K], fixed-score flags, labels."""
        n = probabilities.shape[0]
        if _is_per_image(classes):
            rows = list(classes)
            expected = total if total is not None else n
            if len(rows) != expected:
                raise InvalidArgumentError(f"per-image classes: got {len(rows)} lists for {expected} images")
            rows = rows[offset:offset + n]
            if len({len(r) for r in rows}) > 1 or any(not r for r in rows):
                raise InvalidArgumentError("per-image class lists must all have the same, non-zero length")
        else:
            shared = [classes] if isinstance(classes, int | str | np.integer | Target) else list(
                cast("Sequence[ClassSpec]", classes))
            if not shared:
                raise InvalidArgumentError("classes must not be empty")
            rows = [shared] * n
        zeros = np.zeros(self.num_classes, dtype=np.float32)
        resolved: list[list[ResolvedTarget]] = [
            [(spec if isinstance(spec, Target) else ClassTarget(spec)).resolve(
                self.class_id, self.labels, probabilities[i], logits[i] if logits is not None else zeros)
             for spec in row] for i, row in enumerate(rows)]
        t = len(rows[0]) if rows else 0
        ids = np.array([[r.class_id for r in row] for row in resolved], dtype=np.intp).reshape(n, t)
        directions = np.zeros((n, t, self.num_classes), dtype=np.float32)
        fixed = np.zeros((n, t), dtype=bool)
        labels = [[r.label or self.labels[r.class_id] for r in row] for row in resolved]
        for i, row in enumerate(resolved):
            for j, r in enumerate(row):
                if r.direction is None:
                    directions[i, j, r.class_id] = 1.0
                else:
                    directions[i, j] = r.direction
                fixed[i, j] = r.fixed_score
        return ids, directions, fixed, labels

    # --- explain -------------------------------------------------------------------------------------------

    def explain(self, images: ImageInput | Sequence[ImageInput], *, method: str | CamMethod = "cam",
                top_k: int = 1, classes: Targets = None, batch_size: int = 16,
                box_threshold: float = DEFAULT_THRESHOLD, all_boxes: bool = False, score: str = "logit",
                alpha_mode: AlphaMode = "drop", array_order: ChannelOrder = "RGB",
                **method_options: Any) -> list[ExplainResult]:
        """Explain one or several images; raises the first input error (see :meth:`iter_explain` to go on)."""
        inputs: list[ImageInput]
        if isinstance(images, str | Path | bytes | bytearray | memoryview | np.ndarray):
            inputs = [images]
        else:
            inputs = list(images)
        results = []
        for item in self._explain_stream(inputs, method=method, top_k=top_k, classes=classes,
                                         batch_size=batch_size, box_threshold=box_threshold,
                                         all_boxes=all_boxes, score=score, alpha_mode=alpha_mode,
                                         array_order=array_order, raise_errors=True, total=len(inputs),
                                         prefetch=False, method_options=method_options):
            assert isinstance(item, ExplainResult)
            results.append(item)
        return results

    def iter_explain(self, images: Iterable[ImageInput], *, method: str | CamMethod = "cam", top_k: int = 1,
                     classes: Targets = None, batch_size: int = 16, box_threshold: float = DEFAULT_THRESHOLD,
                     all_boxes: bool = False, score: str = "logit", alpha_mode: AlphaMode = "drop",
                     array_order: ChannelOrder = "RGB", prefetch: bool = True,
                     **method_options: Any) -> Iterator[ExplainResult | ImageFailure]:
        """Stream results in input order, one batch in memory at a time; bad inputs yield ImageFailure.

        With ``prefetch`` a worker thread decodes the next batch and runs the model on it while this one's
        maps are computed and its results consumed (written) by the caller.
        """
        yield from self._explain_stream(images, method=method, top_k=top_k, classes=classes,
                                        batch_size=batch_size, box_threshold=box_threshold, all_boxes=all_boxes,
                                        score=score, alpha_mode=alpha_mode, array_order=array_order,
                                        raise_errors=False, total=None, prefetch=prefetch,
                                        method_options=method_options)

    def iter_explain_video(self, source: Any, **options: Any) -> VideoStream:
        """Explain a video, camera, URL or frame iterable lazily (:func:`cam_runtime.video.iter_explain_video`)."""
        from .video import iter_explain_video

        return iter_explain_video(self, source, **options)

    def _explain_stream(self, images: Iterable[ImageInput], *, method: str | CamMethod, top_k: int,
                        classes: Targets, batch_size: int, box_threshold: float, all_boxes: bool, score: str,
                        alpha_mode: AlphaMode, array_order: ChannelOrder, raise_errors: bool,
                        total: int | None, prefetch: bool,
                        method_options: dict[str, Any]) -> Iterator[ExplainResult | ImageFailure]:
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be ≥ 1, got {batch_size}")
        options = dict(method_options)
        if score != "logit":
            options["score"] = score
        cam_method = get_method(method, **options)
        if classes is None and not 1 <= top_k <= self.num_classes:
            raise InvalidArgumentError(f"top_k must be in [1, {self.num_classes}], got {top_k}")
        if _is_per_image(classes):  # validate every label up front, before any image is decoded
            rows = list(classes)
            if total is not None and len(rows) != total:
                raise InvalidArgumentError(f"per-image classes: got {len(rows)} lists for {total} images")
            for row in rows:
                for spec in row:
                    self.check_target(spec)
        elif _has_target_objects(classes):
            for spec in ([classes] if isinstance(classes, Target) else list(cast("Sequence[ClassSpec]", classes))):
                self.check_target(spec)
        elif classes is not None:
            self.resolve_targets(np.zeros((1, self.num_classes), np.float32), classes, top_k)
        batches = _chunks(enumerate(images), batch_size)
        decode = self._decode_batch
        device_k = top_k if self.device_map_transform(cam_method, classes) is not None else None
        offset = 0
        if prefetch:
            # Pipeline: a worker decodes, preprocesses and runs the model on batch i+1 while this thread
            # computes maps for batch i and the caller writes its outputs (see docs on thread budgets).
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cam-pipeline") as pool:
                pending: Future[Any] | None = None
                for chunk in batches:
                    future = pool.submit(self._decode_and_run, chunk, alpha_mode, array_order, raise_errors,
                                         device_k)
                    if pending is not None:
                        decoded, inferred = pending.result()
                        yield from self._finish_batch(decoded, cam_method, top_k, classes, box_threshold,
                                                      all_boxes, offset, total, inferred)
                        offset += len(decoded)
                    pending = future
                if pending is not None:
                    decoded, inferred = pending.result()
                    yield from self._finish_batch(decoded, cam_method, top_k, classes, box_threshold,
                                                  all_boxes, offset, total, inferred)
        else:
            for chunk in batches:
                decoded = decode(chunk, alpha_mode, array_order, raise_errors)
                yield from self._finish_batch(decoded, cam_method, top_k, classes, box_threshold, all_boxes,
                                              offset, total, self._run_decoded(decoded, device_k))
                offset += len(decoded)

    def _decode_batch(self, chunk: list[tuple[int, ImageInput]], alpha_mode: AlphaMode,
                      array_order: ChannelOrder, raise_errors: bool) -> list[Any]:
        out: list[Any] = []
        for index, image in chunk:
            source = describe_source(image, index)
            start = time.perf_counter()
            try:
                decoded = self.load_image(image, source=source, alpha=alpha_mode, array_order=array_order)
                mid = time.perf_counter()
                tensor = self.preprocessor.tensor(decoded.bgr)
            except CamError as exc:
                if raise_errors:
                    raise
                out.append(ImageFailure(source, str(exc), type(exc).__name__))
                continue
            end = time.perf_counter()
            out.append((decoded, tensor, {"decode": (mid - start) * 1e3, "preprocess": (end - mid) * 1e3}))
        return out

    def _decode_and_run(self, chunk: list[tuple[int, ImageInput]], alpha_mode: AlphaMode,
                        array_order: ChannelOrder, raise_errors: bool,
                        device_k: int | None = None) -> tuple[list[Any], Any]:
        decoded = self._decode_batch(chunk, alpha_mode, array_order, raise_errors)
        return decoded, self._run_decoded(decoded, device_k)

    def _run_decoded(self, decoded: list[Any], device_k: int | None = None) -> Any:
        """(batch, probabilities, features or DeviceMaps, ms per image); device maps when ``device_k`` is set."""
        good = [d for d in decoded if not isinstance(d, ImageFailure)]
        if not good:
            return None
        batch = np.stack([t for _, t, _ in good])
        start = time.perf_counter()
        payload: Any
        if device_k is not None:
            payload = self.run_device_maps(batch, device_k)
            probs = payload.probabilities
        else:
            probs, payload = self.run(batch)
        return batch, probs, payload, (time.perf_counter() - start) * 1e3 / len(good)

    def _finish_batch(self, decoded: list[Any], cam_method: CamMethod, top_k: int, classes: Targets,
                      box_threshold: float, all_boxes: bool, offset: int, total: int | None,
                      inferred: Any = None) -> Iterator[ExplainResult | ImageFailure]:
        good = [d for d in decoded if not isinstance(d, ImageFailure)]
        outputs: dict[int, ExplainResult] = {}
        target_labels: list[list[str]] | None = None
        if good:
            batch, probs, features, infer_ms = inferred
            good_positions = [i for i, d in enumerate(decoded) if not isinstance(d, ImageFailure)]
            per_image_classes = classes
            if _is_per_image(classes):
                all_rows = list(classes)
                per_image_classes = [all_rows[offset + i] for i in good_positions]
            start = time.perf_counter()
            if isinstance(features, dm.DeviceMaps):
                targets = features.classes
                raw_maps = self.device_map_transform(cam_method, classes)(features.maps)
            else:
                per_image_total = len(good_positions) if _is_per_image(classes) else None
                if _has_target_objects(classes):
                    logits = self.head.logits(features)
                    targets, directions, fixed, target_labels = self._resolve_objects(
                        probs, logits, per_image_classes, total=per_image_total)
                    head = HeadInputs(features, probs, self.folder.weights, targets, directions, fixed,
                                      head=self.head)
                else:
                    targets = self.resolve_targets(probs, per_image_classes, top_k, total=per_image_total)
                    head = HeadInputs(features, probs, self.folder.weights, targets, head=self.head)
                if isinstance(cam_method, ScoreCAM):
                    # bind() stores per-call state: a private copy keeps a caller's ScoreCAM safe to share.
                    cam_method = copy.copy(cam_method).bind(batch, self.manifest.input.layout,
                                                            self.predict_probabilities)
                raw_maps = cam_method.maps(head)
            shared_ms = (time.perf_counter() - start) * 1e3 / len(good)
            k_shown = max(top_k, targets.shape[1])
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k_shown]
            for row, (position, (image, _, timings)) in enumerate(zip(good_positions, good, strict=True)):
                start = time.perf_counter()
                target_maps = []
                for t, class_id in enumerate(targets[row]):
                    heatmap = heatmap_at(raw_maps[row, t], image.height, image.width)
                    target_maps.append(TargetMap(
                        class_id=int(class_id),
                        label=target_labels[row][t] if target_labels else self.labels[class_id],
                        probability=float(probs[row, class_id]),
                        raw=raw_maps[row, t], heatmap=heatmap,
                        boxes=boxes_from_map(heatmap, box_threshold, all_boxes)))
                maps_ms = shared_ms + (time.perf_counter() - start) * 1e3
                top = [Prediction(int(c), self.labels[c], float(probs[row, c])) for c in order[row, :top_k]]
                outputs[position] = ExplainResult(
                    source=image.source, image=image, method=cam_method.name, top_k=top, targets=target_maps,
                    timings_ms={**timings, "inference": infer_ms, "maps": maps_ms})
        for position, item in enumerate(decoded):
            yield item if isinstance(item, ImageFailure) else outputs[position]


def normalise_label(label: str) -> str:
    """A label as matched: lower case, '_' and '-' as spaces, runs of spaces collapsed ("Egyptian cat" ==
    "egyptian_cat")."""
    return " ".join(label.lower().replace("_", " ").replace("-", " ").split())


def _identity(maps: FloatArray) -> FloatArray:
    return maps


def _relu_mean(maps: FloatArray) -> FloatArray:
    """Grad-CAM (score = logit) from CAM: the gradient is W[:, c] / (h·w) at every position."""
    return relu(maps) / np.float32(maps.shape[-2] * maps.shape[-1])


def _has_target_objects(classes: Targets) -> bool:
    if isinstance(classes, Target):
        return True
    if classes is None or isinstance(classes, int | str | np.integer):
        return False
    items = list(classes)
    if _are_rows(items):
        return any(isinstance(c, Target) for row in items for c in row)
    return any(isinstance(c, Target) for c in items)


def _is_per_image(classes: Targets) -> TypeGuard[Sequence[Sequence[ClassSpec]]]:
    if classes is None or isinstance(classes, int | str | np.integer | Target):
        return False
    return _are_rows(list(classes))


def _are_rows(items: Sequence[object]) -> TypeGuard[Sequence[Sequence[ClassSpec]]]:
    return bool(items) and all(isinstance(c, list | tuple) for c in items)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

