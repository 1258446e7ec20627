"""Give freed memory back to the system between export stages.

tf2onnx and grappler build and drop many small objects per converted node (3 GB of them for VGG16's 59 MB of
conv weights); glibc keeps those freed pages in its heap, so each stage's transient would otherwise add to the
next one's peak instead of being reused by the system's other processes."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys


def release_memory() -> None:
    """Collect garbage and, with glibc, return free heap pages to the system (``malloc_trim``)."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return
    trim(0)
