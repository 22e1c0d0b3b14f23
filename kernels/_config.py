"""Launch settings of every recurrent kernel, in one place.

Two paths, both persistent (one program per (batch tile, direction) runs the whole time loop; design
A of `shared/KERNEL-DESIGN.md`), chosen here from the shapes:

- resident: W_hh is loaded once before the loop and stays on chip (Triton keeps the loop-invariant
  product operand in shared memory), h and c stay in registers, and one product per step gives
  every gate. Needs one tile of units (BH >= H, a power of two) and no projection; used up to
  `RESIDENT_MAX_H`.
- streamed: W_hh is read every step in [BH, BK] tiles (from L1/L2 once touched), h goes through an
  fp32 double buffer in global memory; every H and the LSTM projection work.

Block sizes come from the shapes; under the interpreter one configuration (autotuning needs a GPU
driver). `python -m kernels.resources` compiles these launches for an H100 and reports registers,
spills and shared memory (tested: the configurations chosen here do not spill).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import triton


@dataclass(frozen=True)
class LaunchConfig:
    BB: int  # batch rows per program (tl.dot wants >= 16)
    BH: int  # hidden units per tile (all G gates of those units)
    BK: int  # reduction tile of the recurrent products (resident: BH)
    num_warps: int
    PRECISION: str  # tl.dot input precision for the fp32 products: "ieee" or "tf32"
    resident: bool  # W_hh kept on chip for the whole loop (one tile: BH >= H)


def interpreted() -> bool:
    """True when Triton runs on the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# the largest tile under the interpreter: small, so that the tests' odd sizes (H = 51, 64, 100) take
# several tiles; a larger one runs big models faster there (every tile op is a numpy call)
INTERPRETER_TILE_CAP = 32
# the resident path's largest H. W_hh is kept in fp32 (gates rounded up to a power of two, BH² each:
# 16 KiB for an LSTM at H = 32). Measured with `kernels.resources` (sm_90, Triton 3.9): up to 32 the
# resident kernels of every cell compile without spills in fp32 and bf16 (one exception, GRU fp32 H = 24
# B = 8 forward: 16 bytes); at H = 51-64 the LSTM forward spills (32-272 bytes per thread)
RESIDENT_MAX_H = 32
# "auto" picks by the rules above; tests force "resident" or "streamed" to run both on every shape
KERNEL_PATH = "auto"
# shared memory one program may use on sm_90 (H100, H200: 227 KiB opt-in); the budget under the
# interpreter and for meta tensors, where no device can be asked
SM90_SHARED_MEMORY = 232448
PRECISIONS = ("ieee", "tf32")


class KernelPathError(ValueError):
    """A kernel path was forced (`KERNEL_PATH`) where it cannot run on this device."""


def _size(n: int | torch.SymInt) -> int:
    # a size as a plain int, with no guard on a symbolic one (torch.compile, torch.export): its hint.
    # Launch settings only pick block sizes; masks make any of them right for every size
    if isinstance(n, torch.SymInt):
        node = n.node
        return int(node.hint) if node.has_hint() else 64
    return int(n)


def _tile(n: int | torch.SymInt, cap: int) -> int:
    return min(cap, max(16, triton.next_power_of_2(_size(n))))


def shared_memory_limit(device: torch.device) -> int:
    """Bytes of shared memory one program may use on ``device`` (Triton's driver reports it; the
    sm_90 figure under the interpreter, on meta tensors, or without a GPU)."""
    if device.type != "cuda" or interpreted() or not torch.cuda.is_available():
        return SM90_SHARED_MEMORY
    return _device_shared_memory(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _device_shared_memory(index: int) -> int:
    from triton.runtime import driver

    return int(driver.active.utils.get_device_properties(index)["max_shared_mem"])


def resident_shared_memory(G: int, BB: int, BH: int, *, backward: bool) -> int:
    """Bytes of shared memory a resident kernel asks for: W_hh in fp32 (G gates rounded up to a power
    of two, BH² each) and the compiler's layout-conversion scratch, at most one (forward) or five
    (backward) fp32 [BB, G·BH] tiles. Measured on sm_90 with `kernels.resources` (Triton 3.9) and
    checked there for every cell at H 16-128, B 8-64, fp32 and bf16 (`tests/test_resources.py`)."""
    gates = triton.next_power_of_2(G)
    return 4 * gates * BH * (BH + (5 if backward else 1) * BB)


def launch_config(
    B: int | torch.SymInt,
    H: int,
    P: int,
    G: int,
    like: torch.Tensor,
    precision: str = "ieee",
    *,
    backward: bool = False,
) -> LaunchConfig:
    """Block sizes, path and precision of one launch: batch B, hidden H, recurrent width P (H, or
    LSTM's proj_size), G gates, storage dtype and device of ``like``.

    ``precision`` ("ieee" or "tf32") is that of the fp32 recurrent products; other dtypes are upcast
    and multiplied in fp32, and the interpreter has no TF32. The resident path runs where W_hh and
    its scratch fit in the device's shared memory (`shared_memory_limit`); forced
    (``KERNEL_PATH = "resident"``) where they do not, it raises `KernelPathError`. A symbolic B
    (torch.compile, torch.export) is read through its hint: no guard on the batch.
    """
    if KERNEL_PATH not in ("auto", "resident", "streamed"):
        raise ValueError(f"KERNEL_PATH must be 'auto', 'resident' or 'streamed', got {KERNEL_PATH!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected 'ieee' or 'tf32', got {precision!r}")
    tf32 = precision == "tf32" and like.dtype == torch.float32 and not interpreted()
    PRECISION = "tf32" if tf32 else "ieee"
    BB = _tile(B, 16 if interpreted() else 32)
    BH = _tile(H, 1 << 30)
    needed = resident_shared_memory(G, BB, BH, backward=backward)
    fits = needed <= shared_memory_limit(like.device)
    if KERNEL_PATH == "resident" and P == H and not fits:
        raise KernelPathError(
            f"KERNEL_PATH = 'resident': W_hh of {G} gates at H = {H} (tile {BH}) with {BB} batch rows "
            f"needs {needed} bytes of shared memory per program and {like.device} allows "
            f"{shared_memory_limit(like.device)}; use 'auto' or 'streamed'"
        )
    # W_hh on chip for the whole loop where it fits; a projection always streams
    chosen = H <= RESIDENT_MAX_H if KERNEL_PATH == "auto" else KERNEL_PATH == "resident"
    resident = P == H and fits and chosen
    if resident:
        return LaunchConfig(BB=BB, BH=BH, BK=BH, num_warps=4 if interpreted() else 8,
                            PRECISION=PRECISION, resident=True)  # fmt: skip
    if interpreted():
        cap = INTERPRETER_TILE_CAP
        return LaunchConfig(BB=BB, BH=_tile(H, cap), BK=_tile(max(H, P), cap), num_warps=4,
                            PRECISION=PRECISION, resident=False)  # fmt: skip
    # BK = 16 and 8 warps: the fp32 FMA product keeps a row block of A and a column block of W per
    # thread, so a wider reduction tile or fewer threads spill (measured with `kernels.resources`)
    return LaunchConfig(BB=BB, BH=_tile(H, 64), BK=16, num_warps=8, PRECISION=PRECISION, resident=False)


# tests set this: outputs and scratch start as NaN, so a slot a kernel leaves unwritten shows
POISON_OUTPUTS = False


def alloc(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An output buffer on ``like``'s device (NaN-filled when `POISON_OUTPUTS` is set)."""
    dtype = dtype or like.dtype
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def or_absent(t: torch.Tensor | None, absent: torch.Tensor) -> torch.Tensor:
    """A kernel argument: ``t``, or ``absent`` where it is None (any tensor: its pointer is never
    read or written when the matching HAS_* flag is off)."""
    return absent if t is None else t


def check_contiguous(fn: str, **tensors: torch.Tensor | None) -> None:
    """The kernels index every tensor as dense and row-major: a strided one is refused (its caller
    makes it contiguous). No copy here: under torch.compile a launcher must trace to the same graph
    whatever the strides its inputs were traced with."""
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(
                f"{fn}: {name} must be contiguous, got shape {list(t.shape)} with strides "
                f"{list(t.stride())}; pass {name}.contiguous()"
            )


def step_gradients(
    keep: bool, T: int, B: int, D: int, X: int, like: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """The δh_t buffer of a backward kernel and its time stride: [T, B, D, X] fp32 when kept (the
    record), else a one-step scratch [1, B, D, X] that every step reuses (stride 0)."""
    return alloc((T if keep else 1, B, D, X), like, torch.float32), B * D * X if keep else 0


@dataclass
class Launch:
    """One kernel launch as a launcher would make it: the kernel, its grid, arguments and meta."""

    kernel: Any  # the @triton.jit function
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    meta: dict[str, Any] = field(default_factory=dict)


_captured: list[Launch] | None = None


def launch(wrapped: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    """Launch a kernel given as ``wrap_triton(kernel)`` — written so in each launcher, where
    `torch.library.triton_op` looks for the kernels an operator runs — or record the launch
    instead inside `capture_launches`."""
    if _captured is not None:
        _captured.append(Launch(getattr(wrapped, "kernel", wrapped), grid, args, meta))
        return
    wrapped[grid](*args, **meta)


@contextlib.contextmanager
def capture_launches() -> Iterator[list[Launch]]:
    """Record the launches the launchers make instead of running them (with ``device="meta"``
    inputs nothing is allocated either): what `kernels.resources` compiles."""
    global _captured
    previous, _captured = _captured, []
    try:
        yield _captured
    finally:
        _captured = previous
