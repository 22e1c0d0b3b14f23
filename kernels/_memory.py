"""Large CPU buffers of the reference path, backed by huge pages where Linux offers them.

The recurrence writes its per-step buffers (outputs, saved gates, gate gradients: [T, D, B, X],
hundreds of MB for pixel MNIST) one step at a time, and each step is the first touch of fresh
pages. With 4 KiB pages that is a page fault per 4 KiB inside the loop: 64 ms to first touch
205 MB on the CI machine (AMD EPYC, 1 thread), 11 ms with 2 MiB pages; the LSTM forward at T 784,
B 128, H 128 took 308 ms against 201 ms (torch.nn's oneDNN LSTM: 190 ms). torch has the same
remedy for every allocation behind an environment variable read at start-up
(THP_MEM_ALLOC_ENABLE=1); a library cannot set it after torch is imported, so `empty` asks the
kernel for huge pages (madvise MADV_HUGEPAGE) on the buffers it allocates itself. Elsewhere (not
Linux, transparent huge pages off, GPU or fake tensors, tracing) it is `torch.empty`.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import torch

HUGE_PAGE = 2 * 1024 * 1024
MADV_HUGEPAGE = 14
# from two huge pages up (one whole page inside at least; the call costs ~2 µs): row-wise MNIST's
# LSTM (14.7 MB of gates per layer, under the 16 MB of before) trained a step in 95-109 ms with 4 KiB
# pages and 86-91 ms with huge pages (2 threads; torch.nn 73-76 ms)
MIN_BYTES = 2 * HUGE_PAGE


def _libc(name: str, *argtypes):
    # a function of Linux's C library, typed, or None (another system, no such function)
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


@functools.cache
def _madvise():
    # libc's madvise, where transparent huge pages can be asked for; else None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return None
    except OSError:
        return None
    return _libc("madvise", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def empty(like: torch.Tensor, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``like.new_empty(shape, dtype=dtype)``; a large CPU buffer is backed by huge pages."""
    t = like.new_empty(shape, dtype=dtype)
    if t.device.type != "cpu" or t.nbytes < MIN_BYTES or torch.compiler.is_compiling():
        return t
    madvise = _madvise()
    if madvise is None or isinstance(t, torch._subclasses.FakeTensor):
        return t
    start = -(-t.data_ptr() // HUGE_PAGE) * HUGE_PAGE  # the whole huge pages inside the buffer
    end = (t.data_ptr() + t.nbytes) // HUGE_PAGE * HUGE_PAGE
    if end > start:
        madvise(start, end - start, MADV_HUGEPAGE)  # advice only: a refusal changes nothing
    return t


# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's largest on 64-bit systems


@functools.cache
def keep_freed_memory() -> bool:
    """For a process that trains (the CLI's ``train``, never the library on its own): glibc's malloc
    keeps freed buffers up to 32 MiB mapped (its mmap threshold at its maximum, the heap never
    trimmed below 1 GiB free), so the next step's tensors of the same sizes reuse pages already
    touched. The row-wise MNIST model's training step went 164 -> 129 ms on one thread of the CI
    machine. Larger buffers are always mapped anew by glibc: the huge pages above cover those.
    Returns whether malloc took the settings (False where there is no glibc).
    """
    mallopt = _libc("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
