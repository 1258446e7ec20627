"""Derived model folders (INT8, FP16) as one package.

- :mod:`.int8`: onnxruntime static quantization (QDQ, per-channel), U8S8 vs S8S8 by measurement;
- :mod:`.fp16`: float16 weights and compute, float32 inputs and outputs;
- :mod:`.fidelity`: the one comparison of a derived model with its float32 source (top-1, maps, boxes);
- :mod:`.common`: loading and timing a candidate, writing the folder (a copy of the whole source manifest).
"""

from __future__ import annotations

from .common import VariantResult
from .fidelity import MIN_MEAN_CORRELATION, MIN_TOP1_AGREEMENT, SetFidelity, acceptance_problems, compare
from .fp16 import fp16_folder
from .int8 import quantize_folder

__all__ = [
    "MIN_MEAN_CORRELATION",
    "MIN_TOP1_AGREEMENT",
    "SetFidelity",
    "VariantResult",
    "acceptance_problems",
    "compare",
    "fp16_folder",
    "quantize_folder",
]
