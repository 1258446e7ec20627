"""The labels file a user passes to a build step (export or import)."""

from __future__ import annotations

from pathlib import Path

from cam_runtime.model import read_labels

from .errors import LabelsError, short_reason


def read_labels_arg(labels_path: str | Path | None) -> list[str] | None:
    """The class names of ``--labels`` (one per line), None when not given; a clear error for a bad file."""
    if labels_path is None:
        return None
    path = Path(labels_path)
    if not path.is_file():
        raise LabelsError(path, "file not found")
    try:
        return read_labels(path)
    except (UnicodeDecodeError, ValueError) as exc:
        raise LabelsError(path, short_reason(exc)) from None
