"""Host memory of the training and evaluation steps: keep freed blocks for the next step.

A CPU step allocates and frees the same activation tensors every time (cifar-quick at batch 100: conv1's
output alone is 13 MB). glibc hands blocks that large out with mmap and gives them back with munmap, or trims
the heap back to the system once its free top passes a threshold; each step then faults every page in again
and the kernel zeroes it. On cifar-quick that was 3.6 million minor page faults in one epoch and a fifth of its
time (1,158 against 1,393 images/s, 2-core EPYC, one thread). Raising glibc's two thresholds (what
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ set before a process starts) keeps those blocks in the heap
across steps: 160 thousand faults. Blocks above the mmap threshold (AlexNet's largest activations) are mapped as
before. Elsewhere than glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 64 << 20  # blocks below this come from the heap and are reused
TRIM_THRESHOLD = 128 << 20  # free memory at the heap's top kept before it is given back


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True where that took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
