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

Those buffers are also recycled (`_Pool`): each call of a layer allocates the same sizes again, and
fresh memory costs its first touch again, a page fault per page (per 2 MiB page, the kernel may
first compact memory to find one: a 32 MiB gate-gradient buffer once took 31 ms to touch). A buffer
whose last tensor is freed goes back to a pool, still mapped and touched, and the next `empty` of
that size takes it. Measured (2 threads, one process, torch.nn in the same loop): the gradflow
LSTM's training step (T 500, B 32, H 128) 110-116 -> 92-95 ms (torch.nn 81-92), row-wise MNIST's
(T 28, B 128, H 256) 38.6-39.1 -> 32.0-32.4 ms (torch.nn 30). The pool keeps at most
`POOL_BYTES` of free buffers (``RNNKIT_CPU_POOL_MB``, default 1024; 0 turns it off); `release()`
frees them.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
import threading

import numpy as np
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
    """``like.new_empty(shape, dtype=dtype)``; a large CPU buffer is backed by huge pages, and comes
    from the pool of freed ones where it holds one of its size."""
    dtype = like.dtype if dtype is None else dtype
    nbytes = dtype.itemsize * math.prod(shape)
    if (
        like.device.type != "cpu"
        or nbytes < MIN_BYTES
        or torch.compiler.is_compiling()
        or isinstance(like, torch._subclasses.FakeTensor)
    ):
        return like.new_empty(shape, dtype=dtype)
    if POOL_BYTES <= 0:
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


# free buffers the pool keeps mapped for the next calls, at most (bytes)
POOL_BYTES = int(float(os.environ.get("RNNKIT_CPU_POOL_MB", "1024")) * 2**20)


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
            while self.free_bytes > POOL_BYTES and self.free:  # the oldest go first
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
