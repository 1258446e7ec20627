"""Library thread pools: OpenCV and every BLAS/OpenMP pool threadpoolctl finds are set to the requested size."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from cam_runtime.threads import limit_library_threads


@pytest.fixture
def restore_pools() -> Iterator[None]:
    before_cv, before = cv2.getNumThreads(), {i["filepath"]: i["num_threads"] for i in threadpool_info()}
    yield
    cv2.setNumThreads(before_cv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=max(before.values(), default=1))


@pytest.mark.parametrize("count", [1, 2])
def test_every_pool_gets_the_requested_size(count: int, restore_pools: None) -> None:
    np.dot(np.ones((64, 64)), np.ones((64, 64)))  # BLAS loaded and used
    reported = limit_library_threads(count)
    assert cv2.getNumThreads() == count and reported["opencv"] == count
    pools = threadpool_info()
    assert pools, "NumPy's BLAS should be visible to threadpoolctl"
    assert all(p["num_threads"] == count for p in pools)
    assert all(v == count for v in reported.values())
