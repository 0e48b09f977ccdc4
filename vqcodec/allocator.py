"""How the process's memory allocator treats freed memory: tuned for the command's process.

A codec call allocates maps of tens of megabytes layer after layer (the VQ-VAE's activations, their
int8 limbs, their int32 sums). glibc's malloc gives each block above a moving threshold (128 kB at
first, at most 32 MB) a mapping of its own and returns the top of its heap to the system whenever
128 kB lie free there, so such a map comes back, call after call, as fresh pages that the kernel must
fault in and zero: about a tenth of an encode here. ``keep_freed_memory`` fixes the threshold at its
largest and stops the trimming, so freed maps are reused. The process then holds on to its peak
memory until it ends: right for a command that exits, which is why the CLI asks for it and
``import vqcodec`` does not.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_LARGEST_MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more on 64-bit machines
_NEVER = 2**31 - 1
_USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (the module docstring); whether it now does.
    Nothing changes where the C library is not glibc or the user set its malloc variables."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mapped = mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD)
    return bool(mapped) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))
