"""Thread budgets: keep OpenCV's and NumPy-BLAS's pools from competing with onnxruntime's threads.

The engine's CPU work is onnxruntime (``intra_op_num_threads`` threads, the calling thread included) plus
per-image OpenCV/NumPy work that runs on the calling thread and one pipeline thread. OpenCV and OpenBLAS
would each start a pool as large as the machine on top of that; :func:`limit_library_threads` sets both to
one thread (the caller's), so the only pool is onnxruntime's and its size is what was asked for.
"""

from __future__ import annotations

import ctypes
import re
from functools import cache
from pathlib import Path

import cv2


@cache
def _openblas_setter() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """``openblas_set_num_threads`` of the OpenBLAS NumPy loaded (any symbol suffix), if any."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: leave BLAS alone
        return None
    for path in sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                return setter
    return None


def limit_library_threads(count: int = 1) -> dict[str, int | None]:
    """Set OpenCV's and OpenBLAS's thread pools (process-wide) to ``count``; returns what was set."""
    cv2.setNumThreads(count)
    setter = _openblas_setter()
    if setter is not None:
        setter(count)
    return {"opencv": cv2.getNumThreads(), "openblas": count if setter is not None else None}
