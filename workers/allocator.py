"""The C allocator of a worker process: large blocks kept, not handed back to the kernel after each use.

glibc's malloc serves a block above its mmap threshold (128 KiB at start, raised as big blocks are freed,
up to 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, and returns the top of its heap to the
kernel once more than the trim threshold is free. A model stage that allocates and frees tens of MiB per
image — ONNX Runtime sessions made without their memory arena (rapidocr's PP-OCRv4 detector: its
intermediate tensors), Pillow's decode buffers, numpy temporaries — then pays a page fault for every 4 KiB
page of every block, every image: measured on 12 photos with the PP-OCRv4 detector (``text``) on one
thread, 2.5 million minor faults and 10 s of the process's 23 s of CPU were the kernel zeroing pages
(``bench/model_stages.py``'s platform run). With the thresholds below the same run faulted 1.0–1.3 million
times and took 15.5 s.

``keep_large_blocks`` sets (``mallopt``) the mmap threshold to 32 MiB — blocks up to that size come from
the heap and are reused — and the trim threshold to ``trim_mib`` (default 256 MiB of free heap kept), so
an actor's resident memory settles at its working set's high-water mark (plus at most ``trim_mib``)
instead of rising and falling with every image. Blocks over 32 MiB are still mapped and unmapped. The
runtime calls it once per worker process (``StageWorker``); ``CURATION_MALLOC_TUNING=0`` turns it off.
Other C libraries (non-glibc) are left alone."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
DEFAULT_TRIM_MIB = 256


def keep_large_blocks(trim_mib: int = DEFAULT_TRIM_MIB) -> bool:
    """Set glibc's mmap and trim thresholds for this process (see the module docstring). True when set;
    False when turned off (``CURATION_MALLOC_TUNING=0``) or the C library is not glibc."""
    if os.environ.get("CURATION_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(M_TRIM_THRESHOLD, int(trim_mib) * 1024 * 1024) == 1 and ok
    if not ok:
        log.warning("mallopt refused the worker's allocator thresholds; page faults per image stay as they are")
    return ok
