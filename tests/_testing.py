"""Helpers for every test: one comparison that names the tensor and reports max-abs and relative
error, a spy on the calls of rnnkit's operators, the TF32 flags, and the kernels' inputs and calls
(shared by the interpreter and the GPU tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rnnkit.ops import backend_ops

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
    """Inside ``with OpCalls("cpu_lstm_bwd") as calls:``, ``calls.args`` lists the arguments of
    every call of that ``torch.ops.rnnkit`` operator (backward passes included); its backend's
    operators are registered first."""

    def __init__(self, name: str) -> None:
        super().__init__()
        backend_ops(name.split("_", 1)[0])
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


# --- the kernels' inputs, calls and comparison ---------------------------------------------------

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels run where the tests do


def kernel_module(cell: str):
    """kernels.rnn, lstm or gru for a cell name such as "lstm_proj"."""
    from kernels import gru, lstm, rnn

    return {"rnn": rnn, "lstm": lstm, "gru": gru}[cell.split("_")[0]]


def make_inputs(cell, T, B, D, H, *, with_state, with_lengths, dtype=torch.float32, device=DEVICE):
    """Forward arguments (positional, keyword) of <cell>_fwd, and the upstream gradients."""
    P = max(1, H // 2) if cell == "lstm_proj" and H > 1 else H
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell.split("_")[0]]
    kw = {"device": device, "dtype": dtype}
    gx = torch.randn(T, B, D, G * H, **kw)
    w_hh = (torch.randn(D, G * H, P, **kw) / P**0.5).to(dtype)
    h0 = torch.randn(D, B, P, **kw) if with_state else None
    lengths = None
    if with_lengths:
        lengths = torch.randint(1, T + 1, (B,), device=device)
        lengths[0] = T
    upstream = {
        "dy": torch.randn(T, B, D, P, **kw),
        "dh_n": torch.randn(D, B, P, **kw),
        "dc_n": torch.randn(D, B, H, **kw),
    }
    if cell.startswith("rnn"):
        return (gx, w_hh, h0, lengths), {"nonlinearity": cell[4:]}, upstream
    if cell == "gru":
        return (gx, w_hh, torch.randn(D, H, **kw), h0, lengths), {}, upstream
    c0 = torch.randn(D, B, H, **kw) if with_state else None
    w_hr = (torch.randn(D, P, H, **kw) / H**0.5).to(dtype) if P != H else None
    return (gx, w_hh, h0, c0, w_hr, lengths), {}, upstream


def run_backward(module, cell, args, kwargs, fwd, upstream, record):
    name = cell.split("_")[0]
    bwd = getattr(module, f"{name}_bwd")
    lengths = args[-1]
    dy, dh_n = upstream["dy"], upstream["dh_n"]
    if name == "rnn":
        return bwd(dy, dh_n, fwd.y, args[1], lengths, record=record, **kwargs)
    if name == "gru":
        return bwd(dy, dh_n, args[1], args[3], fwd.y, fwd.gates, fwd.ghn, lengths, record=record)
    _, w_hh, _, c0, w_hr, _ = args
    return bwd(
        dy, dh_n, upstream["dc_n"], w_hh, w_hr, c0, fwd.gates, fwd.c_steps, lengths, record=record, **kwargs
    )  # kwargs: the LSTM's zoneout, where the forward had one


def compare_outputs(prefix, ours, theirs, dtype):
    for name, a, b in zip(theirs._fields, ours, theirs, strict=True):
        if b is None:
            assert a is None, f"{prefix}{name}: the kernel returned a tensor where the reference has None"
            continue
        assert a.dtype == b.dtype, f"{prefix}{name}: dtype {a.dtype}, reference {b.dtype}"
        assert_close(f"{prefix}{name}", a, b, dtype)
