"""Autograd of the recurrence ops: the backend's backward op walks time in reverse; the weight
gradients are large matrix products over all steps at once (deterministic, no atomics).

    # T steps, B batch, D directions, H hidden, P recurrent width, G gates
    dW_hh[d] = Σ_{t,b} dgates[t, b, d]ᵀ h_prev[t, b, d]      one [G·H, T·B] @ [T·B, P] per direction
    dW_hr[d] = Σ_{t,b} dh[t, b, d]ᵀ (o ⊙ tanh c)[t, b, d]      (LSTM with proj_size)

The formulas are registered on the forward ops (`torch.library.register_autograd`), so eager
autograd, `torch.compile` and `torch.export` all use them.

The per-step record, the whole contract in this module. An operator's arguments are tensors and
numbers, so the `StepRecord` of a call cannot be one: `rnnkit.functional` calls the forward op inside
`recording_into(record)`, the op's `setup_context` takes the record from that block (a thread-local
slot, read nowhere else) into its ctx, and its backward calls ``record(StepGradients)`` if
``record.active`` is true then; a plain callable is always active. Eager only: a compiled graph has
no Python to call in its backward.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from kernels._onednn import sum_over_rows
from kernels.reference import compute_dtype, previous_states


@dataclass(frozen=True)
class StepGradients:
    """The total gradient of every step's state, from one backward pass of one layer.

    Attributes:
        h: [T, B, D, P] float32, dL/dh_t: the direct gradient of y_t plus what flows back
            from step t+1 (zero past a sequence's length).
        c: [T, B, D, H] float32, dL/dc_t for the LSTM (None for RNN and GRU).
        lengths: [B] int64 valid steps per sequence, or None.
    """

    h: torch.Tensor
    c: torch.Tensor | None
    lengths: torch.Tensor | None


@runtime_checkable
class StepRecord(Protocol):
    """What receives a layer's `StepGradients` in backward. ``active`` is asked then, not at forward
    time: a recorder may start between a forward and its backward (a layer's record is active while it
    has hooks registered)."""

    active: bool

    def __call__(self, grads: StepGradients) -> None: ...


StepGradientsHook = StepRecord | Callable[[StepGradients], None]

_pending = threading.local()  # the record of the forward op being called; see the module docstring


@contextlib.contextmanager
def recording_into(record: StepGradientsHook | None) -> Iterator[None]:
    """The forward op called inside this block hands its backward's `StepGradients` to ``record``."""
    _pending.record = record
    try:
        yield
    finally:
        _pending.record = None


def _record_of_call() -> StepGradientsHook | None:
    # setup_context's half of the contract: the record of the op call in progress
    return getattr(_pending, "record", None)


def _recording(ctx) -> StepGradientsHook | None:
    # backward's half: the record, if it is active now
    record = ctx.record
    if record is None or (isinstance(record, StepRecord) and not record.active):
        return None
    return record


def _only_needed(ctx, *grads):
    # autograd wants None for every input that needs no gradient (None inputs included)
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad, strict=True))


def _sum_over_steps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # [T, B, D, M], [T, B, D, N] -> [D, M, N] = Σ_{t,b} a[t, b, d]ᵀ b[t, b, d]: one [M, T·B] @ [T·B, N]
    # product per direction, on strided views (no transposed copy of a; oneDNN where a is gate-major)
    T, B, D, M = a.shape
    b = b.to(a.dtype)
    return torch.stack([sum_over_rows(a[:, :, d].reshape(T * B, M), b[:, :, d].reshape(T * B, -1))
                        for d in range(D)])  # fmt: skip


def _time_major(dgx: torch.Tensor, gate_major: bool) -> torch.Tensor:
    # a backward op that writes dgx gate-major returns the dense [D, G, T, B] (see `rnnkit.ops`):
    # viewed as [T, B, D, G], the weight gradients read it as it lies
    return dgx.permute(2, 3, 0, 1) if gate_major else dgx


def _setup(ctx, training: bool, precision: str, saved, saved_only) -> None:
    ctx.training = training
    ctx.precision = precision
    ctx.save_for_backward(*saved)
    ctx.mark_non_differentiable(*saved_only)
    ctx.set_materialize_grads(False)
    ctx.record = _record_of_call()
    ctx.device_type = saved[0].device.type


def _dense(*grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    # the kernels take dense tensors; an incoming gradient may be expanded or strided (a sum's)
    return tuple(None if g is None else g.contiguous() for g in grads)


def _check_saved(ctx, cell: str) -> None:
    if not ctx.training:
        raise RuntimeError(
            f"{cell}_fwd: called with training=False, so it kept nothing for backward; "
            "call it with training=True where gradients are needed"
        )


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """The backends do their own fp32 math on the dtype they are given: autocast stays out, forward
    and backward (and where it is off, no context at all: exported graphs stay flat)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _rnn_autograd(bwd, gate_major: bool):
    def setup_context(ctx, inputs, output):
        _, w_hh, h0, lengths, nonlinearity, training, precision = inputs
        y, _ = output
        _setup(ctx, training, precision, (w_hh, h0, lengths, y), ())
        ctx.nonlinearity = nonlinearity

    def backward(ctx, dy, dh_n):
        _check_saved(ctx, "rnn")
        w_hh, h0, lengths, y = ctx.saved_tensors
        record = _recording(ctx)
        dy, dh_n = _dense(dy, dh_n)
        with no_autocast(ctx.device_type):
            dgx, dh0, dh_steps = bwd(
                dy, dh_n, y, w_hh, lengths, ctx.nonlinearity, record is not None, ctx.precision
            )
            dgx = _time_major(dgx, gate_major)
            if record is not None:
                record(StepGradients(dh_steps, None, lengths))
            dw_hh = None
            if ctx.needs_input_grad[1]:
                dw_hh = _sum_over_steps(dgx, previous_states(y, h0, lengths))
        return _only_needed(ctx, dgx, dw_hh, dh0, None, None, None, None)

    return setup_context, backward


def _lstm_autograd(bwd, gate_major: bool):
    def setup_context(ctx, inputs, output):
        _, w_hh, h0, c0, w_hr, lengths, training, precision = inputs
        y, _, _, gates, c_steps = output
        _setup(ctx, training, precision, (w_hh, w_hr, h0, c0, lengths, y, gates, c_steps), (gates, c_steps))

    def backward(ctx, dy, dh_n, dc_n, _gates, _c_steps):
        _check_saved(ctx, "lstm")
        w_hh, w_hr, h0, c0, lengths, y, gates, c_steps = ctx.saved_tensors
        record = _recording(ctx)
        dy, dh_n, dc_n = _dense(dy, dh_n, dc_n)
        with no_autocast(ctx.device_type):
            dgx, dh0, dc0, dh_steps, dc_steps = bwd(
                dy, dh_n, dc_n, w_hh, w_hr, c0, gates, c_steps, lengths, record is not None, ctx.precision
            )
            dgx = _time_major(dgx, gate_major)
            if record is not None:
                record(StepGradients(dh_steps, dc_steps, lengths))
            dw_hh = dw_hr = None
            if ctx.needs_input_grad[1]:
                dw_hh = _sum_over_steps(dgx, previous_states(y, h0, lengths))
            if w_hr is not None and ctx.needs_input_grad[4]:
                H = c_steps.shape[-1]
                ct = compute_dtype(gates)
                m = gates[..., 3 * H :].to(ct) * torch.tanh(c_steps.to(ct))  # projection input o ⊙ tanh c
                dw_hr = _sum_over_steps(dh_steps, m).to(w_hr.dtype)
        return _only_needed(ctx, dgx, dw_hh, dh0, dc0, dw_hr, None, None, None)

    return setup_context, backward


def _gru_autograd(bwd, gate_major: bool):
    def setup_context(ctx, inputs, output):
        _, w_hh, _, h0, lengths, training, precision = inputs
        y, _, gates, ghn = output
        _setup(ctx, training, precision, (w_hh, h0, lengths, y, gates, ghn), (gates, ghn))

    def backward(ctx, dy, dh_n, _gates, _ghn):
        _check_saved(ctx, "gru")
        w_hh, h0, lengths, y, gates, ghn = ctx.saved_tensors
        record = _recording(ctx)
        dy, dh_n = _dense(dy, dh_n)
        with no_autocast(ctx.device_type):
            dgx, dghn, dh0, dh_steps = bwd(
                dy, dh_n, w_hh, h0, y, gates, ghn, lengths, record is not None, ctx.precision
            )
            dgx = _time_major(dgx, gate_major)
            if record is not None:
                record(StepGradients(dh_steps, None, lengths))
            H = ghn.shape[-1]
            dw_hh = db_hn = None
            if ctx.needs_input_grad[1]:
                dgh = torch.cat((dgx[..., : 2 * H], dghn), dim=-1)  # hidden-side gates
                dw_hh = _sum_over_steps(dgh, previous_states(y, h0, lengths))
            if ctx.needs_input_grad[2]:
                db_hn = dghn.sum(dim=(0, 1))
        return _only_needed(ctx, dgx, dw_hh, db_hn, dh0, None, None, None)

    return setup_context, backward


_FORMULAS = {"rnn": _rnn_autograd, "lstm": _lstm_autograd, "gru": _gru_autograd}


def register(fwd, bwd, cell: str, *, gate_major: bool = False) -> None:
    """Register the autograd of forward op ``fwd`` of ``cell``, whose backward calls op ``bwd``; the
    backward op itself has no derivative, and says so when a second backward reaches it.
    ``gate_major``: the backward op returns dgx as [D, G, T, B] (see `rnnkit.ops`)."""
    setup_context, backward = _FORMULAS[cell](bwd, gate_major)
    fwd.register_autograd(backward, setup_context=setup_context)
    bwd.register_autograd(_no_double_backward(bwd), setup_context=lambda ctx, inputs, output: None)


def _no_double_backward(bwd):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"rnnkit's recurrent layers do not support double backward (a second backward through "
            f"rnnkit.{bwd._name}, after create_graph=True): the gradient of their gradient is not implemented"
        )

    return backward
