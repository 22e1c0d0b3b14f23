"""Launch settings of every recurrent kernel, in one place.

Three paths, all persistent (one launch runs the whole time loop), chosen here from the shapes
(`launch_config`, which says why in its table below):

- resident (design A of `shared/KERNEL-DESIGN.md`, one program per (batch tile, direction) owns every
  unit): W_hh is loaded once before the loop and stays on chip (Triton keeps the loop-invariant
  product operand in shared memory), h and c stay in registers, and one product per step gives
  every gate. Needs one tile of units (BH >= H, a power of two) and no projection; used up to
  `RESIDENT_MAX_H`.
- split (design B, `kernels/split.py`): the hidden units are split over up to one program per SM,
  each keeping its rows of W_hh on chip, with a grid barrier per step. The GPU path for every larger
  H whose slices fit; never chosen automatically under the interpreter (where it runs one phase per
  launch: tests force it).
- streamed (design A): W_hh is read every step in [BH, BK] tiles (from L1/L2 once touched), h goes
  through an fp32 double buffer in global memory; every H and the LSTM projection work. The path
  of last resort, and the interpreter's for H > 32.

Block sizes come from the shapes; under the interpreter one configuration (autotuning needs a GPU
driver). `python cli.py resources` compiles these launches for an H100 and reports registers,
spills, shared memory, co-residency and tensor-core use; `tests/test_resources.py` checks, for the
benchmark's shapes and the resident path's limits, that what is chosen here compiles, does not spill
and runs its products on tensor cores.
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

from kernels import TRITON_DTYPES
from kernels._contract import check_shapes


@dataclass(frozen=True)
class LaunchConfig:
    path: str  # "resident", "split" or "streamed"
    BB: int  # batch rows per program (tl.dot wants >= 16)
    BH: int  # hidden units per tile (all G gates of those units); split: per program
    BK: int  # reduction tile of the recurrent products (resident: BH)
    num_warps: int
    PRECISION: str  # tl.dot input precision for the fp32 products: "ieee" or "tf32"
    BC: int = 0  # split: columns of h per program (BH, or the projection's share of P)
    why: str = ""  # the reason for the path, for a reader of a launch

    @property
    def resident(self) -> bool:
        return self.path == "resident"


def interpreted() -> bool:
    """True when Triton runs on the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# the largest tile under the interpreter: small, so that the tests' odd sizes (H = 51, 64, 100) take
# several tiles; a larger one runs big models faster there (every tile op is a numpy call)
INTERPRETER_TILE_CAP = 32
# the split path's units per program under the interpreter: several programs split the tests' H > 32,
# few enough to run fast (a test narrows it to tl.dot's least width: 4 units of 4 gates)
INTERPRETER_SPLIT_UNITS = 32
# the resident path's largest H with IEEE fp32 products (FMA, no tensor cores). W_hh is kept in fp32
# (gates rounded up to a power of two, BH² each: 16 KiB for an LSTM at H = 32). Measured with
# `kernels.resources` (sm_90, Triton 3.9): up to 32 the IEEE resident kernels of every cell compile
# without spills; at H = 51-64 the LSTM forward spills (32-272 bytes per thread). On tensor cores (TF32,
# and bf16/fp16 upcast to it) none spills up to what shared memory holds (RNN H = 128, LSTM and GRU
# H = 64, B 8-100), so there shared memory alone bounds the path
RESIDENT_MAX_H = 32
# "auto" picks by the rules above; tests force each path on every shape, and RNNKIT_KERNEL_PATH does on
# a machine (to time one design against another)
PATHS = ("auto", "resident", "split", "streamed")
KERNEL_PATH = os.environ.get("RNNKIT_KERNEL_PATH", "auto")
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


SM90_SMS = 132  # an H100 SXM's or H200's streaming multiprocessors: the plan under the interpreter


def multiprocessor_count(device: torch.device) -> int:
    """The SMs of ``device``: how many split programs can be resident at once, one per SM."""
    if device.type != "cuda" or interpreted() or not torch.cuda.is_available():
        return SM90_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def resident_shared_memory(G: int, BB: int, BH: int, *, backward: bool) -> int:
    """Bytes of shared memory a resident kernel asks for: W_hh in fp32 (G gates rounded up to a power
    of two, BH² each) and the compiler's layout-conversion scratch, at most one (forward) or five
    (backward) fp32 [BB, G·BH] tiles. Measured on sm_90 with `kernels.resources` (Triton 3.9) and
    checked there for every cell at H 16-128, B 8-64, fp32 and bf16 (`tests/test_resources.py`)."""
    gates = triton.next_power_of_2(G)
    return 4 * gates * BH * (BH + (5 if backward else 1) * BB)


def split_shared_memory(
    G: int, BB: int, BH: int, BCP: int, H: int, P: int, itemsize: int, *, backward: bool, BK: int = 32
) -> int:
    """Bytes of shared memory a split kernel asks for. Forward: its rows of W_hh [GP·BH, P] (and of
    W_hr [BCP, H]) in the storage dtype, kept for the whole sequence, and the product's A operand,
    all of h_{t-1} [BB, P] (and m_t [BB, H]), staged in fp32. Backward: W_hr's columns [P, BH] and δh_t
    [BB, P] staged (a projection), and the streamed product's pipeline, two fp32 [BB, BK] chunks of the
    gate gradients and two [BK, BCP] of W_hh (taken as fp32). Measured on sm_90 with
    `kernels.resources` (Triton 3.9) and checked there (`tests/test_resources.py`)."""
    gates, PP, HP = triton.next_power_of_2(G), _padded(P), _padded(H)
    proj = P != H
    if backward:
        return 8 * BK * (BB + BCP) + ((itemsize * BH + 4 * BB) * PP if proj else 0)
    projection = (itemsize * BCP + 4 * BB) * HP if proj else 0
    return itemsize * gates * BH * PP + 4 * BB * PP + projection + 4096


def _padded(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


# the split forward's A operand, all of h_{t-1} [BB, P] in fp32, in registers: at most this many values
# per program (measured: BB·P = 16384 with 8 warps takes 112-158 registers and does not spill; 32768
# spills), and 8 warps above half of it. The backward's product streams W_hh in chunks of `split_chunk`
# rows with 4 warps (8 spilled 4 bytes in one kernel)
SPLIT_MAX_OPERAND = 16384


def split_chunk(BB: int) -> int:
    """The split backward's reduction chunk: rows of W_hh (and columns of the gate gradients) per step
    of its K-loop. Each chunk costs about one pipelined L2 round trip (0.19 µs on the H200, G·H / 32
    of them per step at 32), so the widest that does not spill: BB·BK <= 2048 (measured with
    `kernels.resources`, sm_90: 134-158 registers at BB 16-64; BK 128 at BB 32 spills 4 bytes)."""
    return max(32, min(128, 2048 // BB))


def _split_config(
    B: int, H: int, P: int, G: int, D: int, like: torch.Tensor, PRECISION: str, backward: bool
) -> LaunchConfig | str:
    # the split path's block sizes, or why it cannot run: every program resident at once (at most one
    # per SM), its operand within registers, its weights within the device's shared memory
    gates, PP = triton.next_power_of_2(G), _padded(P)
    least = 16 if P != H else max(1, 16 // gates)  # tl.dot's N >= 16: GP·BH, and BH with a projection
    if interpreted():
        BB, BH = 16, max(least, INTERPRETER_SPLIT_UNITS)
    else:
        # at least two batch tiles past 16 rows, at most 32 rows: on the H200 (tools/split_probe.py)
        # halving BB from 32 or 64 saved 3-21% per step where the SMs held the extra programs
        BB = min(32, _tile(triton.cdiv(_size(B), 2), 32))
        while BB > 16 and BB * PP > SPLIT_MAX_OPERAND:
            BB //= 2
        tiles = triton.cdiv(_size(B), BB) * D
        sms = multiprocessor_count(like.device)
        if tiles > sms:
            return f"{tiles} batch tiles and directions > {sms} SMs"
        BH = max(least, triton.next_power_of_2(triton.cdiv(H, sms // tiles)))
        if triton.cdiv(H, BH) * tiles > sms:
            return f"{triton.cdiv(H, BH) * tiles} programs > {sms} SMs"
    NJ = triton.cdiv(H, BH)
    BC = BH if P == H else triton.next_power_of_2(triton.cdiv(P, NJ))
    BK = split_chunk(BB)
    needed = split_shared_memory(G, BB, BH, max(16, BC), H, P, like.element_size(), backward=backward, BK=BK)
    if needed > shared_memory_limit(like.device):
        return f"{needed} bytes of shared memory per program > {shared_memory_limit(like.device)}"
    wide = BB * PP > SPLIT_MAX_OPERAND // 2 and not backward
    return LaunchConfig(
        path="split", BB=BB, BH=BH, BK=BK, num_warps=8 if wide else 4, PRECISION=PRECISION, BC=BC,
        why=f"{NJ} programs per batch tile and direction, {BH} units each",
    )  # fmt: skip


def launch_config(
    B: int | torch.SymInt,
    H: int,
    P: int,
    G: int,
    like: torch.Tensor,
    precision: str = "ieee",
    *,
    D: int = 1,
    backward: bool = False,
) -> LaunchConfig:
    """Path, block sizes and precision of one launch: batch B, hidden H, recurrent width P (H, or
    LSTM's proj_size), G gates, D directions, storage dtype and device of ``like``.

    The table, in order (``KERNEL_PATH`` forces one; forced where it cannot run, `KernelPathError`):

    - resident: no projection, W_hh and its scratch fit shared memory (on tensor cores: RNN H <= 128,
      LSTM and GRU H <= 64), and H <= `RESIDENT_MAX_H` with IEEE fp32 products. No barrier: one
      program per batch tile keeps W_hh and the state on chip.
    - split: on a GPU, where every program is resident at once (at most one per SM) and its
      weights fit shared memory. Design B: W_hh spread over the SMs, on chip; a barrier per step.
    - streamed: everything else (and the interpreter's path for H > 32). Any H; W_hh from L2 every
      step, one SM per batch tile.

    ``precision`` ("ieee" or "tf32") is that of the fp32 recurrent products (bf16/fp16 go to tensor
    cores in their own dtype on the split path; the interpreter upcasts and has no TF32). A symbolic
    B (torch.compile, torch.export) is read through its hint: no guard on the batch.
    """
    if KERNEL_PATH not in PATHS:
        raise ValueError(f"KERNEL_PATH must be one of {', '.join(map(repr, PATHS))}, got {KERNEL_PATH!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected 'ieee' or 'tf32', got {precision!r}")
    # fp32 storage: as asked. bf16/fp16: the split path multiplies them as they are; design A upcasts
    # them first, and TF32 holds their 8 or 11 significant bits exactly: tensor cores either way
    fp32 = like.dtype == torch.float32
    tf32 = not interpreted() and (precision == "tf32" or not fp32)
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
    # W_hh on chip for the whole loop where it fits; a projection never runs resident
    auto = H <= RESIDENT_MAX_H or PRECISION == "tf32"
    chosen = auto if KERNEL_PATH == "auto" else KERNEL_PATH == "resident"
    if P == H and fits and chosen:
        return LaunchConfig(path="resident", BB=BB, BH=BH, BK=BH, num_warps=4 if interpreted() else 8,
                            PRECISION=PRECISION, why=f"W_hh {needed} bytes on chip")  # fmt: skip
    if KERNEL_PATH == "split" or (KERNEL_PATH == "auto" and not interpreted()):
        split = _split_config(B, H, P, G, D, like, PRECISION if fp32 else "ieee", backward)
        if isinstance(split, LaunchConfig):
            return split
        if KERNEL_PATH == "split":
            raise KernelPathError(f"KERNEL_PATH = 'split' cannot run G = {G}, H = {H}, P = {P}: {split}")
    if interpreted():
        cap = INTERPRETER_TILE_CAP
        return LaunchConfig(path="streamed", BB=BB, BH=_tile(H, cap), BK=_tile(max(H, P), cap), num_warps=4,
                            PRECISION=PRECISION)  # fmt: skip
    # BK = 16 and 8 warps: the fp32 FMA product keeps a row block of A and a column block of W per
    # thread, so a wider reduction tile or fewer threads spill (measured with `kernels.resources`)
    return LaunchConfig(path="streamed", BB=BB, BH=_tile(H, 64), BK=16, num_warps=8, PRECISION=PRECISION)


# tests set this: outputs and scratch start as NaN, so a slot a kernel leaves unwritten shows
POISON_OUTPUTS = False


def alloc(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An output buffer on ``like``'s device (NaN-filled when `POISON_OUTPUTS` is set)."""
    dtype = dtype or like.dtype
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def check_inputs(fn: str, nonlinearity: str | None = None, **tensors: torch.Tensor | None) -> None:
    """Refuse what a kernel would read wrongly or silently round: a tensor of the wrong shape or
    device (`kernels._contract`), a strided tensor (the kernels index every tensor as dense and
    row-major; its caller makes it contiguous), a floating tensor of another dtype than the first one
    given, a dtype the kernels do not compute (float64: they would compute it in float32), or lengths
    that are not int64. No copy or cast here: under torch.compile a launcher must trace to the same
    graph whatever the strides its inputs were traced with."""
    check_shapes(fn, nonlinearity, **tensors)
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not t.is_contiguous():
            raise ValueError(
                f"{fn}: {name} must be contiguous, got shape {list(t.shape)} with strides "
                f"{list(t.stride())}; pass {name}.contiguous()"
            )
        if name == "lengths":
            if t.dtype != torch.int64:
                raise TypeError(f"{fn}: lengths must be int64, got {t.dtype}")
        elif first is None:
            first = name, t.dtype
            if t.dtype not in TRITON_DTYPES:
                raise TypeError(
                    f"{fn}: {name} has dtype {t.dtype}; the Triton kernels take float32, bfloat16 or "
                    f"float16 (kernels.reference computes {t.dtype})"
                )
        elif t.dtype != first[1]:
            raise TypeError(f"{fn}: {name} must have the dtype of {first[0]}, {first[1]}, got {t.dtype}")


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
