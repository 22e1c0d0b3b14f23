"""Launch settings of every recurrent kernel, in one place.

Design A of `shared/KERNEL-DESIGN.md` (batch-tiled, persistent): one program per (batch tile,
direction) runs the whole time loop; W_hh is read every step in [BH, BK] tiles (from L1/L2 once it
has been touched), so every hidden size works. Block sizes come from the shapes; under the
interpreter one configuration (no autotuning: it needs a GPU driver).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton


@dataclass(frozen=True)
class LaunchConfig:
    BB: int  # batch rows per program (tl.dot wants >= 16)
    BH: int  # hidden units per tile (all G gates of those units)
    BK: int  # reduction tile of the recurrent products
    num_warps: int
    PRECISION: str  # tl.dot input precision for the fp32 products: "ieee" or "tf32"


def interpreted() -> bool:
    """True when Triton runs on the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# the largest tile under the interpreter: small, so that the tests' odd sizes (H = 51, 64, 100) take
# several tiles; a larger one runs big models faster there (every tile op is a numpy call)
INTERPRETER_TILE_CAP = 32


def _tile(n: int, cap: int) -> int:
    return min(cap, max(16, triton.next_power_of_2(n)))


def launch_config(B: int, H: int, P: int, dtype: torch.dtype) -> LaunchConfig:
    """Block sizes and precision for batch B, hidden H, recurrent width P, storage ``dtype``.

    fp32 products use TF32 only when the user allowed it the way torch does
    (``torch.backends.cuda.matmul.allow_tf32``); other dtypes are upcast and multiplied in fp32.
    """
    cap = INTERPRETER_TILE_CAP if interpreted() else 64
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not interpreted()
    return LaunchConfig(
        BB=_tile(B, 16 if interpreted() else 32),
        BH=_tile(H, cap),
        BK=_tile(max(H, P), cap),
        num_warps=4,
        PRECISION="tf32" if tf32 else "ieee",
    )


# tests set this: outputs and scratch start as NaN, so a slot a kernel leaves unwritten shows
POISON_OUTPUTS = False


def alloc(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An output buffer on ``like``'s device (NaN-filled when `POISON_OUTPUTS` is set)."""
    dtype = dtype or like.dtype
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def optional(t: torch.Tensor | None, absent: torch.Tensor) -> torch.Tensor:
    """A kernel argument: ``t`` made contiguous, or ``absent`` (any tensor: its pointer is never
    read when the matching HAS_* flag is off)."""
    return absent if t is None else t.contiguous()


def step_gradients(
    keep: bool, T: int, B: int, D: int, X: int, like: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """The δh_t buffer of a backward kernel and its time stride: [T, B, D, X] fp32 when kept (the
    record), else a one-step scratch [1, B, D, X] that every step reuses (stride 0)."""
    return alloc((T if keep else 1, B, D, X), like, torch.float32), B * D * X if keep else 0
