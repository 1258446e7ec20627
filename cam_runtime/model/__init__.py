"""The model folder (format ``cam-model`` v1) as one package.

- :mod:`.manifest`: the schema (dataclasses), parsing and validation of ``manifest.json``;
- :mod:`.files`: the small files read safely (sha256, .npy head weights without pickle, bounded labels);
- :mod:`.reader`: :class:`ModelFolder` (load and verify) and :func:`check_files` (``camr info``);
- :mod:`.graph`: checks of the ONNX graphs before any session exists (operators, sizes, external data);
- :mod:`.writer`: atomic writing of new folders and of derived (INT8/FP16) copies.
"""

from __future__ import annotations

from .files import imagenet_labels, read_labels, sha256_file
from .manifest import (
    MANIFEST_FILENAME,
    HeadSpec,
    InputSpec,
    Manifest,
    ModelFiles,
    OutputSpec,
    Preprocess,
    parse_manifest,
    read_manifest,
)
from .reader import FileCheck, ModelFolder, check_files
from .writer import write_derived_folder, write_model_folder

__all__ = [
    "MANIFEST_FILENAME",
    "FileCheck",
    "HeadSpec",
    "InputSpec",
    "Manifest",
    "ModelFiles",
    "ModelFolder",
    "OutputSpec",
    "Preprocess",
    "check_files",
    "imagenet_labels",
    "parse_manifest",
    "read_labels",
    "read_manifest",
    "sha256_file",
    "write_derived_folder",
    "write_model_folder",
]
