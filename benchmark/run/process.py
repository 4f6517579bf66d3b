"""Process-wide settings a training run needs, applied by ``run_method`` before every run.

glibc's ``malloc`` serves blocks of 128 KiB and more with their own ``mmap`` and trims free
memory off the top of the heap. A training step allocates and frees tensors of one to tens
of MiB each (stage-map batches, activations, gradients), so every such tensor lands in fresh
pages that the kernel faults in one 4 KiB page at a time, step after step. Raising both
thresholds lets freed blocks be reused by the next step (not every one: torch asks for
aligned blocks, which a freed block of the same size does not always fit). Values do not
change; the heap keeps up to ``TRIM_THRESHOLD`` of free memory instead of returning it to
the system. Other C libraries are left as they are.
"""
from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 128 << 20
TRIM_THRESHOLD = 512 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process (see the module docstring);
    False under another C library."""
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
