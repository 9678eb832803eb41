"""Process settings for computing on CPU."""

from __future__ import annotations

import os

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_allocator_tuned = False  # mallopt is called once per process


def tune_cpu_process() -> None:
    """Process settings for computing on CPU; bertzoo modules apply them when fit, validation,
    test or predict starts on CPU, and `bertzoo bench` applies them to both columns.

    - Denormal floats flush to zero: the tiny gradients of the vocabulary softmax would
      otherwise slow the CPU matmuls many times over (see `bertzoo.model.init_weights`).
    - Freed memory stays in the process (glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD, as
      the MALLOC_*_THRESHOLD_ environment variables would set them): by default glibc hands
      large freed blocks back to the kernel, and the next step page-faults every activation
      and gradient back in (docs/benchmarks.md has the measurement). GPUs' caching allocators
      do the same. Nothing happens where the C library is not glibc, or when
      MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ is set in the environment (your own
      choice is kept).
    """
    torch.set_flush_denormal(True)
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):  # not a GNU C library, or not POSIX
        libc = ""
    if not libc.startswith("glibc") or {"MALLOC_MMAP_THRESHOLD_",
                                        "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return
    import ctypes
    mallopt = ctypes.CDLL(None).mallopt
    mallopt(_M_MMAP_THRESHOLD, 1 << 30)
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
