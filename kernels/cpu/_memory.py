"""The CPU backend's large buffers: huge pages where Linux offers them, recycled between calls.

The recurrence writes its per-step buffers ([T, D, B, X], hundreds of MB for pixel MNIST) one step
at a time, and every first touch of a fresh 4 KiB page is a fault inside the loop; `empty` asks for
2 MiB pages (madvise MADV_HUGEPAGE) and takes a freed buffer of the same size from the pool
(`_Pool`), still mapped and touched. The pool keeps at most `SETTINGS.pool_bytes` of free buffers;
`release()` frees them. Elsewhere (GPU or fake tensors, tracing, small buffers) it is `torch.empty`.
What each measured: docs/cpu-backend.md.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import threading

import numpy as np
import torch

from kernels.cpu._config import SETTINGS, eager_cpu

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
    """``like.new_empty(shape, dtype=dtype)``; a large CPU buffer is backed by huge pages, and comes
    from the pool of freed ones where it holds one of its size."""
    dtype = like.dtype if dtype is None else dtype
    nbytes = dtype.itemsize * math.prod(shape)
    if nbytes < MIN_BYTES or not eager_cpu(like, dtype=None):
        return like.new_empty(shape, dtype=dtype)
    if SETTINGS.pool_bytes <= 0:
        return _advise(like.new_empty(shape, dtype=dtype))
    return _pool.take(nbytes).view(dtype).view(shape)


def _advise(t: torch.Tensor) -> torch.Tensor:
    # ask for huge pages on the whole 2 MiB pages inside t's memory
    madvise = _madvise()
    start = -(-t.data_ptr() // HUGE_PAGE) * HUGE_PAGE
    end = (t.data_ptr() + t.nbytes) // HUGE_PAGE * HUGE_PAGE
    if madvise is not None and end > start:
        madvise(start, end - start, MADV_HUGEPAGE)  # advice only: a refusal changes nothing
    return t


class _Lease:
    """One pooled buffer lent out: numpy keeps it as the base of the array that the lent tensor's
    storage holds, so it lives exactly as long as the last tensor viewing that memory, and on its
    way out it gives the buffer back."""

    def __init__(self, pool: _Pool, block: torch.Tensor) -> None:
        self.pool, self.block = pool, block
        self.__array_interface__ = {
            "shape": (block.numel(),), "typestr": "|u1", "data": (block.data_ptr(), False), "version": 3,
        }  # fmt: skip

    def __del__(self) -> None:
        self.pool.give(self.block)


class _Pool:
    """Large CPU buffers (uint8, whole 2 MiB pages) recycled between calls, by size."""

    def __init__(self) -> None:
        self.free: list[torch.Tensor] = []  # oldest first
        self.free_bytes = 0
        # threads may call `empty` at once, and a lease can die (give) inside take, from the garbage
        # collector: a re-entrant lock, and nothing allocated while it is held but by give itself
        self.lock = threading.RLock()

    def take(self, nbytes: int) -> torch.Tensor:
        """A uint8 tensor of ``nbytes`` (a view of a buffer of whole huge pages), lent until its last
        view is freed."""
        size = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
        block = None
        with self.lock:
            for k in range(len(self.free)):
                if self.free[k].numel() == size:
                    block = self.free.pop(k)
                    self.free_bytes -= size
                    break
        if block is None:
            block = _advise(torch.empty(size, dtype=torch.uint8))
        return torch.from_numpy(np.asarray(_Lease(self, block)))[:nbytes]

    def give(self, block: torch.Tensor) -> None:
        with self.lock:
            self.free.append(block)
            self.free_bytes += block.numel()
            while self.free_bytes > SETTINGS.pool_bytes and self.free:  # the oldest go first
                self.free_bytes -= self.free.pop(0).numel()

    def release(self) -> None:
        with self.lock:
            self.free.clear()
            self.free_bytes = 0


_pool = _Pool()


def release() -> None:
    """Free the pool's buffers (the next calls allocate and touch fresh memory again)."""
    _pool.release()


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
