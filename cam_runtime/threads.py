"""Thread budgets: keep OpenCV's and the BLAS/OpenMP pools from competing with onnxruntime's threads.

The engine's CPU work is onnxruntime (``intra_op_num_threads`` threads, the calling thread included) plus
per-image OpenCV/NumPy work that runs on the calling thread and one pipeline thread. OpenCV and NumPy's BLAS
(OpenBLAS, MKL or BLIS, and any OpenMP runtime they bring) would each start a pool as large as the machine on
top of that; :func:`limit_library_threads` sets them to one thread (the caller's), so the only pool is
onnxruntime's and its size is what was asked for. threadpoolctl finds the loaded BLAS/OpenMP libraries.
"""

from __future__ import annotations

from typing import Any

import cv2


def _controller() -> Any:
    """threadpoolctl's view of the native thread pools loaded now (NumPy imported first; rescanned per call)."""
    import numpy  # noqa: F401  (loads its BLAS so that threadpoolctl can see it)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def limit_library_threads(count: int = 1) -> dict[str, int | None]:
    """Set OpenCV's and the BLAS/OpenMP pools (process-wide) to ``count``; returns what each now uses."""
    cv2.setNumThreads(count)
    controller = _controller()
    controller.limit(limits=count)
    pools = {f"{info['internal_api']}": info["num_threads"] for info in controller.info()}
    return {"opencv": cv2.getNumThreads(), **pools}
