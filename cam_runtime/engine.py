"""CamEngine: a verified model folder behind one facade over its session, targets and explain pipeline.

The jobs live in their own modules: :mod:`cam_runtime.session` (providers, options, graph checks, guarded runs,
IOBinding), :mod:`cam_runtime.targets` (class index, label lookup, target requests) and
:mod:`cam_runtime.pipeline` (typed batches: decode, run, maps, results). The engine wires them together and
names no method class: methods declare what they need (:class:`cam_runtime.methods.CamMethod`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import numpy.typing as npt

from . import device_maps as dm
from . import openvino_runtime
from .boxes import DEFAULT_THRESHOLD
from .errors import GraphMismatchError, HeadKindError, InvalidArgumentError, RunTimeoutError
from .heads import GraphHead, Head, LinearHead
from .imaging import DEFAULT_MAX_PIXELS, AlphaMode, ChannelOrder, DecodedImage, ImageInput, load_image
from .methods import CamMethod, get_method
from .model import ModelFolder
from .pipeline import BatchDecoder, ExplainRequest, Pipeline, pixel_cap
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
from .results import ExplainResult, ImageFailure
from .session import DEFAULT_RUN_TIMEOUT_S, ModelSession, create_session, default_threads, session_options
from .targets import ClassIndex, ClassSpec, PerImage, TargetRequest, Targets, normalise_label
from .threads import limit_library_threads

if TYPE_CHECKING:
    from .video import VideoStream

__all__ = ["CamEngine", "ClassSpec", "OnOff", "PerImage", "Targets", "default_threads", "normalise_label"]

OnOff = Union[bool, Literal["auto"]]
"""True, False, or "auto" (on when the session runs on CUDA)."""


class CamEngine:
    """Explains images with a model folder; thread-safe (onnxruntime sessions allow concurrent ``run``)."""

    def __init__(self, folder: ModelFolder, session: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 resize: str | None = None, device_maps: bool = False, io_binding: bool = False,
                 head: Head | None = None, run_timeout: float | None = DEFAULT_RUN_TIMEOUT_S,
                 max_pixels_in_flight: int | None = None) -> None:
        self.folder = folder
        self.manifest = folder.manifest
        self.max_pixels = max_pixels
        self.max_pixels_in_flight = max_pixels_in_flight if max_pixels_in_flight is not None else 2 * max_pixels
        """Decoded pixels the pipeline holds at once, across the batch being finished and the one prefetched."""
        if self.max_pixels_in_flight < 1:
            raise InvalidArgumentError(f"max_pixels_in_flight must be ≥ 1, got {max_pixels_in_flight}")
        self.preprocessor = Preprocessor(self.manifest.input, self.manifest.preprocess, resize)
        self.classes = ClassIndex(folder.labels)
        """Class ids from ids or labels (:class:`cam_runtime.targets.ClassIndex`)."""
        self.head: Head = head if head is not None else LinearHead(folder.linear_weights("a linear head"),
                                                                   folder.bias)
        """What follows the features: the dense head (closed forms) or the folder's head graph."""
        self.model_session = ModelSession(session, self.manifest, device_maps=device_maps, io_binding=io_binding,
                                          run_timeout=run_timeout)
        """The guarded onnxruntime session (:class:`cam_runtime.session.ModelSession`)."""
        self.model_session.validate(self.head, folder.num_channels, folder.is_linear)
        # The pipeline runs the model through this facade, so wrapping engine.run (tests, tracing) reaches it.
        self._pipeline = Pipeline(self, self.head, self.classes, folder.weights, self.manifest.input.layout,
                                  self.model_session.input_shape())

    # --- construction ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", threads: int | None = None,
             verify_checksums: bool = True, warmup: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
             resize: str | None = None, cuda_options: dict[str, Any] | None = None,
             library_threads: int | None = 1, spinning: bool = False, device_maps: OnOff = False,
             io_binding: OnOff = False, providers: Sequence[ProviderSpec] | None = None,
             run_timeout: float | None = DEFAULT_RUN_TIMEOUT_S, max_pixels_in_flight: int | None = None,
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
        ``run_timeout`` stops any model run (one batch) after that many seconds (None: no limit);
        ``max_pixels_in_flight`` bounds the decoded pixels held at once (default: twice ``max_pixels``).
        ``trust_graph`` allows operators outside the CNN allowlist (loops, branches: :mod:`cam_runtime.model.graph`).
        """
        if threads is not None and threads < 1:
            raise InvalidArgumentError(f"threads must be ≥ 1, got {threads}")
        for name, value in (("device_maps", device_maps), ("io_binding", io_binding)):
            if value not in (True, False, "auto"):
                raise InvalidArgumentError(f"{name} must be True, False or 'auto', got {value!r}")
        folder = ModelFolder.load(path, verify_checksums=verify_checksums, trust_graph=trust_graph)
        # OpenVINO's own runtime (device="openvino-runtime", a bf16 folder): the model graph runs there; head
        # graphs, if any, on onnxruntime's CPU provider.
        ov_options = openvino_runtime.requested(device, providers, folder.manifest.provenance)
        if ov_options is not None:
            if device_maps is True or io_binding is True:
                raise InvalidArgumentError("device_maps and io_binding need onnxruntime, not the OpenVINO runtime")
            device, providers = "cpu", None
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
        options = session_options(ort, threads=threads, spinning=spinning)
        if library_threads is not None:
            limit_library_threads(library_threads)
        if ov_options is not None:
            session = openvino_runtime.session_from_spec(folder.model_path, ov_options, threads or default_threads())
        else:
            session = create_session(ort, model, options, session_providers, folder.model_path.name)
            warn_on_fallback(session_providers, session.get_providers())
        head = None
        if folder.manifest.head is not None:
            sessions = [create_session(ort, str(folder.path_of(role)), options, session_providers,
                                       folder.path_of(role).name) for role in ("head", "gradient")]
            head = GraphHead(sessions[0], sessions[1], folder.manifest.head, folder.manifest.outputs.features_layout,
                             folder.manifest.num_classes)
        engine = cls(folder, session, max_pixels=max_pixels, resize=resize, device_maps=use_maps,
                     io_binding=io_binding is True or (io_binding == "auto" and session.get_providers()[0] == CUDA),
                     head=head, run_timeout=run_timeout, max_pixels_in_flight=max_pixels_in_flight)
        if warmup:
            try:
                engine.warmup()
            except RunTimeoutError:
                raise  # its own message says what to raise; "does not match the manifest" would mislead
            except Exception as exc:  # a graph that loads but cannot run (bad shapes inside, unsupported op)
                raise GraphMismatchError(f"running {folder.model_path.name} on a zero batch failed: "
                                         f"{str(exc).strip().splitlines()[0][:300]}") from None
        return engine

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
        return self.model_session.input_shape()

    # --- properties ------------------------------------------------------------------------------------

    @property
    def session(self) -> Any:
        """The onnxruntime InferenceSession (replaceable, e.g. by a wrapper in tests)."""
        return self.model_session.session

    @session.setter
    def session(self, value: Any) -> None:
        self.model_session.session = value

    @property
    def io_binding(self) -> bool:
        """Run through onnxruntime IOBinding: input uploaded once, only the fetched outputs copied to the host."""
        return self.model_session.io_binding

    @io_binding.setter
    def io_binding(self, value: bool) -> None:
        self.model_session.io_binding = value

    @property
    def device_maps(self) -> bool:
        """True when the session has the on-device CAM outputs (see :mod:`cam_runtime.device_maps`)."""
        return self.model_session.device_maps

    @property
    def run_timeout(self) -> float | None:
        """Seconds one model run may take before it is stopped (None: no limit)."""
        return self.model_session.run_timeout

    @property
    def _binding_device(self) -> tuple[str, int]:
        return self.model_session.binding_device

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
        return self.model_session.providers

    # --- inference -----------------------------------------------------------------------------------------

    def run(self, batch: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Model on a preprocessed batch → (probabilities [N, K], features [N, h, w, C] in NHWC)."""
        return self.model_session.run(batch)

    def predict_probabilities(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities only, for forward-only methods and metrics (masked passes, deletion curves)."""
        return self.model_session.predict_probabilities(batch)

    def run_device_maps(self, batch: npt.NDArray[np.float32], top_k: int = 1) -> dm.DeviceMaps:
        """Probabilities and the CAMs of the top-k classes, computed on the session's device (``device_maps``)."""
        return self.model_session.run_device_maps(batch, top_k)

    def device_map_transform(self, method: CamMethod, classes: Targets = None) -> Any:
        """How ``method``'s maps follow from device CAMs (a function), or None where the NumPy path is needed
        (the method's :meth:`~cam_runtime.methods.CamMethod.from_device_cams`; top-k targets only)."""
        if not self.device_maps or classes is not None or not self.head.linear:
            return None
        return method.from_device_cams()

    def load_image(self, image: ImageInput, *, source: str | None = None, alpha: AlphaMode = "drop",
                   array_order: ChannelOrder = "RGB") -> DecodedImage:
        """Decode one input with this engine's pixel limit."""
        return load_image(image, source=source, max_pixels=self.max_pixels, alpha=alpha, array_order=array_order)

    # --- targets -----------------------------------------------------------------------------------------

    def class_id(self, target: ClassSpec) -> int:
        """A class id from an id or a label (case-insensitive); ambiguous labels must be given by id."""
        return self.classes.class_id(target)

    def check_target(self, spec: ClassSpec) -> None:
        """Validate one class or target object before any image is decoded (labels exist, ranks fit)."""
        self.classes.check(spec)

    def resolve_targets(self, probabilities: npt.NDArray[np.float32], classes: Targets, top_k: int,
                        offset: int = 0, total: int | None = None) -> npt.NDArray[np.intp]:
        """Target class ids [N, T]: top-k by probability, or the given classes (shared or per image)."""
        n = probabilities.shape[0]
        request = TargetRequest.parse(classes, top_k, self.num_classes)
        if request.per_image is not None:
            expected = total if total is not None else n
            if len(request.per_image) != expected:
                raise InvalidArgumentError(f"per-image classes: got {len(request.per_image)} lists for {expected} "
                                           "images")
        zeros = np.zeros_like(probabilities) if request.has_objects else None
        return request.resolve(self.classes, probabilities, list(range(offset, offset + n)), zeros).ids

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
        targets = TargetRequest.parse(classes, top_k, self.num_classes)
        targets.validate(self.classes, total)  # every label checked before any image is decoded
        transform = self.device_map_transform(cam_method, classes)
        request = ExplainRequest(cam_method, targets, box_threshold, all_boxes, alpha_mode, array_order,
                                 raise_errors, batch_size, top_k if transform is not None else None)
        decoder = BatchDecoder(images, request, self.load_image, self.preprocessor,
                               pixel_cap(self.max_pixels_in_flight, prefetch))
        return self._pipeline.stream(decoder, request, prefetch)

