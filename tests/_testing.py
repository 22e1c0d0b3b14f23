"""Helpers for every test: one comparison that names the tensor and reports max-abs and relative
error, and a spy on the calls of rnnkit's operators."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# (rtol, atol): the error allowed is atol + rtol * max|expected|, per storage dtype
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (5e-3, 1e-4),
    torch.bfloat16: (4e-2, 1e-3),
}


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None):
    """Fail with the tensor's name, max-abs and relative error unless actual ≈ expected."""
    assert actual is not None, f"{name}: got None, expected a tensor of shape {list(expected.shape)}"
    assert actual.shape == expected.shape, f"{name}: shape {list(actual.shape)} != {list(expected.shape)}"
    rtol, atol = TOLERANCES[dtype or expected.dtype]
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all(), f"{name}: has {int((~torch.isfinite(a)).sum())} non-finite values"
    err = (a - e).abs().max().item() if a.numel() else 0.0
    scale = e.abs().max().item() if e.numel() else 0.0
    allowed = atol + rtol * scale
    assert err <= allowed, (
        f"{name}: max abs error {err:.3e}, relative {err / max(scale, 1e-30):.3e} "
        f"(allowed {allowed:.3e} = {atol:g} + {rtol:g} * {scale:.3e}), shape {list(e.shape)}"
    )


class OpCalls(TorchDispatchMode):
    """Inside ``with OpCalls("reference_lstm_bwd") as calls:``, ``calls.args`` lists the
    arguments of every call of that ``torch.ops.rnnkit`` operator (backward passes included)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.op = getattr(torch.ops.rnnkit, name).default
        self.args: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is self.op:
            self.args.append(args)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def tf32_flags(*, cudnn: bool, matmul: bool) -> Iterator[None]:
    """torch's TF32 flags for cuDNN (its RNNs, and rnnkit's recurrence) and for CUDA matmuls, set
    inside the block and restored after (pytest's monkeypatch cannot restore the matmul one)."""
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
