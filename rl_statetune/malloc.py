"""Keep the memory torch frees for reuse, on Linux with glibc (CPU runs).

By default glibc serves every allocation above a threshold (128 KiB, raised dynamically up to 32 MiB) with its own
``mmap`` and gives it back to the kernel on ``free``. A CPU training step allocates and frees the same large
tensors each time (the head's logits, the batch's hidden states), so every step faults all their pages in again:
on ``configs/rl_quick.yaml`` that was 31 million minor page faults and a third of the process's CPU time spent in
the kernel. Raising the mmap and trim thresholds (``mallopt``, the same as ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``) makes ``free`` keep the pages in the heap for the next step's tensors, as the CUDA
caching allocator does on a GPU. The price is resident memory: the peak stays the same, but the process does not
shrink between steps. ``RL_STATETUNE_MALLOPT=0`` leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # glibc's malloc.h
KEEP = 2**31 - 1                                 # bytes: the largest value mallopt takes (an int)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True where both were set (False: not Linux,
    not glibc, or ``RL_STATETUNE_MALLOPT=0``)."""
    if os.environ.get("RL_STATETUNE_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:      # the process's own symbols, libc's among them (find_library would run ldconfig at every start)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):     # a libc without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, KEEP) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP) == 1
