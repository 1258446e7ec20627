"""Exception hierarchy: one class per failure, each also inheriting the matching builtin."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar


class CamError(Exception):
    """Base class of every error cam-runtime raises on purpose."""


# --- model folders -------------------------------------------------------------------------------


class ModelLoadingError(CamError):
    """A model folder could not be loaded."""


class ModelFolderNotFoundError(ModelLoadingError, FileNotFoundError):
    """The model folder does not exist."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(_missing_model_message(Path(path)))


def _missing_model_message(path: Path) -> str:
    """'model folder not found' with the likeliest fix: a file given, or a sibling folder that is a model."""
    if path.is_file():
        return f"{path} is a file, not a model folder (pass the folder that holds manifest.json)"
    parent = path.parent
    try:
        siblings = sorted(p for p in parent.iterdir() if (p / "manifest.json").is_file())
    except OSError:
        siblings = []
    stem = path.name.split("-")[0]
    close = [p for p in siblings if p.name.startswith(stem)] or siblings
    if close:
        names = " or ".join(f"-m {p}" for p in close[:3])
        return f"model folder not found: {path} (did you mean {names}?)"
    return f"model folder not found: {path} (create one with `camr export` or `camr demo`)"


class ModelFileNotFoundError(ModelLoadingError, FileNotFoundError):
    """A file the manifest names is missing."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"model file not found: {path}")


class ManifestError(ModelLoadingError, ValueError):
    """manifest.json is missing, unreadable or does not follow the format."""

    def __init__(self, manifest_path: str | Path, problem: str) -> None:
        super().__init__(f"invalid manifest {manifest_path}: {problem}")


class UnsupportedFormatError(ModelLoadingError, ValueError):
    """The folder is not a cam-model folder or its format version is unknown."""

    def __init__(self, found: object, supported: Iterable[object]) -> None:
        supported_text = ", ".join(str(s) for s in supported)
        super().__init__(f"unsupported model format {found!r} (this runtime reads: {supported_text})")


class ChecksumMismatchError(ModelLoadingError, ValueError):
    """A model file's sha256 differs from the manifest (tampered or corrupted)."""

    def __init__(self, path: str | Path, expected: str, actual: str) -> None:
        super().__init__(
            f"checksum mismatch for {path}: manifest says sha256 {expected[:12]}…, file has {actual[:12]}…"
            " (file corrupted or tampered with; re-export or re-copy the model folder)"
        )


class UnsafePathError(ModelLoadingError, ValueError):
    """A path in the manifest points outside the model folder."""

    def __init__(self, name: str, problem: str = "points outside the model folder") -> None:
        super().__init__(f"manifest file path {name!r} {problem}; refused")
        self.problem = problem


class WeightsError(ModelLoadingError, ValueError):
    """The dense weights, bias or labels do not fit the manifest or the ONNX graph."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"invalid model weights: {problem}")


class GraphMismatchError(ModelLoadingError, ValueError):
    """The ONNX graph's inputs or outputs do not match the manifest."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"ONNX graph does not match the manifest: {problem}")


class GraphCheckError(ModelLoadingError, ValueError):
    """An ONNX file of the folder cannot be checked before loading (not ONNX, shape inference fails, …)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{Path(path).name}: {problem}; refused")


class UntrustedOperatorError(ModelLoadingError, ValueError):
    """The graph uses operators outside the CNN allowlist (loops, branches, sequences, custom domains…)."""

    def __init__(self, path: str | Path, operators: Iterable[str]) -> None:
        names = list(operators)
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        super().__init__(f"{Path(path).name} uses operators outside the CNN allowlist ({shown}); refused: such a "
                         "graph can loop or allocate without bound. If you trust this model, pass "
                         "--trust-model-graph (API: trust_graph=True)")


class TensorBudgetError(ModelLoadingError, ValueError):
    """Shape inference found a tensor larger than the per-tensor budget (e.g. ConstantOfShape to gigabytes)."""

    def __init__(self, path: str | Path, tensor: str, shape: Sequence[int], nbytes: int, budget: int) -> None:
        super().__init__(f"{Path(path).name}: tensor {tensor[:80]!r} of shape {list(shape)} needs {nbytes:,} bytes "
                         f"at batch 1, more than the {budget:,} allowed per tensor; refused")


class ExternalDataError(ModelLoadingError, ValueError):
    """A tensor's external data is outside the folder, unverified, missing or out of range."""

    def __init__(self, path: str | Path, tensor: str, location: str, problem: str) -> None:
        super().__init__(f"{Path(path).name}: tensor {tensor[:80]!r} has external data {location[:120]!r} that "
                         f"{problem}; refused")


class DeviceMapsError(ModelLoadingError, ValueError):
    """The graph cannot be extended with on-device CAM outputs (``device_maps``)."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"cannot compute maps on the device: {problem}")


class OnnxMissingError(ModelLoadingError, ImportError):
    """The onnx package (a dependency: graphs are checked with it before loading) is not installed."""

    def __init__(self, feature: str) -> None:
        super().__init__(f"{feature} needs the onnx package: pip install onnx (a dependency of cam-runtime)")


class MissingDependencyError(CamError, ImportError):
    """An optional feature was used without the package that provides it."""

    def __init__(self, feature: str, package: str, extra: str) -> None:
        super().__init__(f"{feature} needs the {package} package: pip install 'cam-runtime[{extra}]'")


# --- execution providers ---------------------------------------------------------------------------


class ProviderError(CamError, RuntimeError):
    """An execution provider problem."""


class ProviderNotAvailableError(ProviderError):
    """An explicitly requested execution provider is not available."""

    HINTS: ClassVar[dict[str, str]] = {
        "CUDAExecutionProvider": "install cam-runtime[gpu] instead of cam-runtime[cpu]",
        "TensorrtExecutionProvider": "install cam-runtime[gpu] with TensorRT",
        "OpenVINOExecutionProvider": "install cam-runtime[openvino] (onnxruntime-openvino) instead of cam-runtime[cpu]",
    }

    def __init__(self, requested: str, available: Iterable[str]) -> None:
        available_text = ", ".join(available) or "none"
        hint = self.HINTS.get(requested, "it needs an onnxruntime build that includes it")
        super().__init__(f"execution provider {requested} is not available; available providers: {available_text} "
                         f"({hint})")


class OnnxRuntimeMissingError(ProviderError, ImportError):
    """onnxruntime is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "onnxruntime is not installed; install exactly one of: pip install 'cam-runtime[cpu]' "
            "or pip install 'cam-runtime[gpu]'"
        )


# --- images ------------------------------------------------------------------------------------------


class ImageError(CamError, ValueError):
    """An input image could not be used."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """The image file does not exist."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"image not found: {path}")


class ImageFolderError(ImageError, NotADirectoryError):
    """A folder of images was expected (quantize --calibration / --held-out) but the path is a file or missing."""

    def __init__(self, path: str | Path, what: str = "images") -> None:
        problem = ("is a file, not a folder (pass the folder that holds the images)" if Path(path).is_file()
                   else "folder not found")
        super().__init__(f"{what}: {path} {problem}")


class ImageReadError(ImageError, OSError):
    """The image file exists but cannot be read."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")


class ImageDecodeError(ImageError):
    """The bytes are not a decodable image (empty, truncated, corrupt or not an image)."""

    def __init__(self, source: str, reason: str = "not a decodable image") -> None:
        super().__init__(f"cannot decode image {source}: {reason}")


class ImageTooLargeError(ImageError):
    """The image header declares more pixels than the configured limit (decompression bomb guard)."""

    def __init__(self, source: str, width: int, height: int, limit: int) -> None:
        super().__init__(
            f"image {source} is {width}x{height} = {width * height} pixels, above the limit of {limit} "
            "(raise max_pixels / --max-pixels to allow it)"
        )


class InvalidImageArrayError(ImageError, TypeError):
    """An in-memory image array has an unsupported shape or dtype."""

    def __init__(self, shape: tuple[int, ...], dtype: object) -> None:
        super().__init__(
            f"unsupported image array of shape {shape} and dtype {dtype}; expected HxW, HxWx1, HxWx3 or "
            "HxWx4 of uint8, uint16 or float in [0, 1]"
        )


# --- arguments -----------------------------------------------------------------------------------------


class InvalidArgumentError(CamError, ValueError):
    """A public function was called with an invalid argument."""


class HeadKindError(InvalidArgumentError):
    """Something defined only for a linear GAP → Dense head was asked of a model with a graph head."""

    def __init__(self, purpose: str) -> None:
        super().__init__(
            f"{purpose} is defined only for a GAP → Dense head (class weights per channel); this model has a "
            "non-linear head graph: use gradcam, gradcam++, hirescam, xgradcam, layercam (exact gradients), "
            "or scorecam, ablationcam, reciprocam, eigencam (forward only)")


class UnknownMethodError(InvalidArgumentError):
    """The requested CAM method does not exist."""

    def __init__(self, method: str, available: Iterable[str]) -> None:
        super().__init__(f"unknown CAM method {method!r}; available: {', '.join(available)}")


class UnknownClassError(InvalidArgumentError, KeyError):
    """A target class id or label does not exist in the model."""

    def __init__(self, target: object, problem: str) -> None:
        super().__init__(f"unknown target class {target!r}: {problem}")

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0])


# --- outputs ----------------------------------------------------------------------------------------


class OutputError(CamError, OSError):
    """An output could not be written."""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists and overwriting was not allowed."""

    def __init__(self, path: str | Path, *, resumable: bool = False) -> None:
        # Only `camr explain` has --skip-existing; the other commands would send users to a missing option.
        hint = "use --force to overwrite or --skip-existing to resume" if resumable else "use --force to overwrite"
        super().__init__(f"output already exists: {path} ({hint})")


class OutputFolderError(OutputError):
    """The output folder (or a subfolder) cannot be created or written to."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot write to output folder {path}: {reason}")


class UnsafeOutputPathError(OutputError, ValueError):
    """An output name would resolve outside the output folder (e.g. through a symlink)."""

    def __init__(self, name: str, root: str | Path) -> None:
        super().__init__(f"output path {name!r} would leave the output folder {root}; refused")


class ImageEncodeError(OutputError, ValueError):
    """An image could not be encoded in the requested format."""

    def __init__(self, fmt: str) -> None:
        super().__init__(f"OpenCV could not encode an image as {fmt!r}")


# --- annotations (evaluation) ------------------------------------------------------------------------


class FidelityError(CamError, ValueError):
    """A derived model (INT8, FP16) disagrees with its float32 source more than the acceptance thresholds allow."""

    def __init__(self, variant: str, problems: Sequence[str]) -> None:
        super().__init__(f"{variant} model rejected: {'; '.join(problems)} (see the fidelity report above; "
                         "try more or more representative calibration images, or accept with --accept-low-fidelity)")


class AnnotationError(CamError, ValueError):
    """A ground-truth boxes file (CSV or Pascal VOC XML) is missing, unsafe or malformed."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"invalid boxes file {path}: {problem}")


# --- the HTTP service (camr serve) -------------------------------------------------------------------------


class ServeError(CamError):
    """A request to the HTTP service was refused; ``status`` is its HTTP status code."""

    status: int = 400


class BadRequestError(ServeError, ValueError):
    """The request body or its parameters cannot be read (bad JSON, bad base64, missing image)."""

    status = 400


class UnsupportedMediaTypeError(ServeError, ValueError):
    """The request's Content-Type is not one the route accepts."""

    status = 415

    def __init__(self, content_type: str, accepted: str) -> None:
        super().__init__(f"unsupported content type {content_type or '(none)'!r}; send {accepted}")


class RequestTooLargeError(ServeError, ValueError):
    """The request body is larger than the server's limit."""

    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than the limit of {limit} bytes (--max-body-bytes)")


class UnauthorizedError(ServeError, PermissionError):
    """The bearer token is missing or wrong."""

    status = 401

    def __init__(self) -> None:
        super().__init__("missing or invalid bearer token (send 'Authorization: Bearer <token>')")


class UnknownModelError(ServeError, KeyError):
    """The URL names a model the server does not serve."""

    status = 404

    def __init__(self, name: str, served: Iterable[str]) -> None:
        super().__init__(f"unknown model {name!r}; this server serves: {', '.join(served)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0])


class OverloadedError(ServeError, RuntimeError):
    """The request queue is full; the client should retry later."""

    status = 503

    def __init__(self, queue_size: int) -> None:
        super().__init__(f"server overloaded: the queue of {queue_size} requests is full; retry later")


class NotReadyError(ServeError, RuntimeError):
    """The server is starting up or draining and takes no new work."""

    status = 503


class RequestTimeoutError(ServeError, TimeoutError):
    """The request was not answered within the per-request timeout."""

    status = 504

    def __init__(self, seconds: float) -> None:
        super().__init__(f"request not answered within {seconds:g} s (--timeout)")


# --- video and streams ---------------------------------------------------------------------------------


class VideoError(CamError):
    """A video, camera or raw frame stream could not be (fully) read; ``frame`` is how many frames were read."""

    frame: int = 0


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The video file does not exist."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"video not found: {path}")


class VideoOpenError(VideoError, OSError):
    """The decoder cannot open the video, camera or URL at all."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot open video {source}: {reason}")


class VideoTruncatedError(VideoError, EOFError):
    """The video ended before the frame count its container declares, or a raw stream ended inside a frame."""

    def __init__(self, source: str, frame: int, detail: str) -> None:
        self.frame = frame
        super().__init__(f"video {source} is truncated or corrupt: reading stopped at frame {frame} ({detail}); "
                         "the outputs of the frames before it are kept")


class VideoDecodeError(VideoError, ValueError):
    """A frame was read but could not be decoded or has another size than the stream."""

    def __init__(self, source: str, frame: int, reason: str) -> None:
        self.frame = frame
        super().__init__(f"cannot decode frame {frame} of {source}: {reason}; the outputs of the frames before it "
                         "are kept")


class StreamStalledError(VideoError, TimeoutError):
    """A live source or pipe delivered no frame within the timeout."""

    def __init__(self, source: str, frame: int, timeout_s: float) -> None:
        self.frame = frame
        super().__init__(f"stream {source} stalled: no frame for {timeout_s:g} s after frame {frame} "
                         "(raise --timeout to wait longer)")


class VideoFrameTooLargeError(VideoError, ValueError):
    """Video frames have more pixels than the configured limit."""

    def __init__(self, source: str, width: int, height: int, limit: int) -> None:
        super().__init__(f"frames of {source} are {width}x{height} = {width * height} pixels, above the limit of "
                         f"{limit} (raise max_pixels / --max-pixels to allow them)")


class VideoWriteError(OutputError):
    """No video encoder could be opened for an output file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot write video {path}: {reason}")


# --- running the model ---------------------------------------------------------------------------


class ModelRunError(CamError, RuntimeError):
    """A model run failed or returned outputs that cannot be used (wrong shape, not finite)."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"model run failed: {problem}")


class RunTimeoutError(ModelRunError, TimeoutError):
    """A model run took longer than the per-run time limit and was stopped (``run_timeout``)."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"stopped after {limit_s:g} s (the per-batch time limit; raise run_timeout / "
                         "--run-timeout if the model is just slow)")


class ResumeMismatchError(OutputError, ValueError):
    """--skip-existing found records made by another model folder, method or options."""

    def __init__(self, record: str | Path, difference: str) -> None:
        super().__init__(f"cannot resume: {record} was made by a different run ({difference}); use "
                         "--redo-mismatched to redo such images or --force to start over")
