"""Autograd Functions of the recurrence: the backend runs the time loop both ways; the weight
gradients are large matrix products over all steps at once (deterministic, no atomics).

    # T steps, B batch, D directions, H hidden, P recurrent width, G gates
    dW_hh[d] = Σ_{t,b} dgates[t, b, d]ᵀ h_prev[t, b, d]      one [G·H, T·B] @ [T·B, P] per direction
    dW_hr[d] = Σ_{t,b} dh[t, b, d]ᵀ (o ⊙ tanh c)[t, b, d]      (LSTM with proj_size)
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

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


StepGradientsHook = Callable[[StepGradients], None]


def _recording(ctx) -> StepGradientsHook | None:
    # the hook to call in this backward, if any: a hook with an ``active`` attribute is asked at
    # backward time, so a recorder may start between forward and backward
    hook = ctx.record
    return hook if hook is not None and getattr(hook, "active", True) else None


def _only_needed(ctx, *grads):
    # autograd wants None for every input that needs no gradient (None inputs included)
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad, strict=True))


def _sum_over_steps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # [T, B, D, M], [T, B, D, N] -> [D, M, N] = Σ_{t,b} a[t, b, d]ᵀ b[t, b, d]: one [M, T·B] @ [T·B, N]
    # product per direction, on strided views (no transposed copy of a)
    T, B, D, M = a.shape
    b = b.to(a.dtype)
    return torch.stack([a[:, :, d].reshape(T * B, M).T @ b[:, :, d].reshape(T * B, -1) for d in range(D)])


class RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, w_hh, h0, lengths, ops: types.SimpleNamespace, nonlinearity: str, record):
        y, h_n = ops.rnn_fwd(gx, w_hh, h0, lengths, nonlinearity=nonlinearity, training=True)
        ctx.save_for_backward(w_hh, h0, lengths, y)
        ctx.ops, ctx.nonlinearity, ctx.record, ctx.device_type = ops, nonlinearity, record, gx.device.type
        ctx.set_materialize_grads(False)
        return y, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n):
        with torch.autocast(device_type=ctx.device_type, enabled=False):
            return RNNFunction._backward(ctx, dy, dh_n)

    @staticmethod
    def _backward(ctx, dy, dh_n):
        w_hh, h0, lengths, y = ctx.saved_tensors
        record = _recording(ctx)
        grads = ctx.ops.rnn_bwd(
            dy, dh_n, y, w_hh, lengths, nonlinearity=ctx.nonlinearity, record=record is not None
        )
        if record is not None:
            record(StepGradients(grads.dh_steps, None, lengths))
        dw_hh = None
        if ctx.needs_input_grad[1]:
            dw_hh = _sum_over_steps(grads.dgx, previous_states(y, h0, lengths))
        return _only_needed(ctx, grads.dgx, dw_hh, grads.dh0, None, None, None, None)


class LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, w_hh, h0, c0, w_hr, lengths, ops: types.SimpleNamespace, record):
        out = ops.lstm_fwd(gx, w_hh, h0, c0, w_hr, lengths, training=True)
        ctx.save_for_backward(w_hh, w_hr, h0, c0, lengths, out.y, out.gates, out.c_steps)
        ctx.ops, ctx.record, ctx.device_type = ops, record, gx.device.type
        ctx.set_materialize_grads(False)
        return out.y, out.h_n, out.c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        with torch.autocast(device_type=ctx.device_type, enabled=False):
            return LSTMFunction._backward(ctx, dy, dh_n, dc_n)

    @staticmethod
    def _backward(ctx, dy, dh_n, dc_n):
        w_hh, w_hr, h0, c0, lengths, y, gates, c_steps = ctx.saved_tensors
        record = _recording(ctx)
        grads = ctx.ops.lstm_bwd(
            dy, dh_n, dc_n, w_hh, w_hr, c0, gates, c_steps, lengths, record=record is not None
        )
        if record is not None:
            record(StepGradients(grads.dh_steps, grads.dc_steps, lengths))
        dw_hh = dw_hr = None
        if ctx.needs_input_grad[1]:
            dw_hh = _sum_over_steps(grads.dgx, previous_states(y, h0, lengths))
        if w_hr is not None and ctx.needs_input_grad[4]:
            H = c_steps.shape[-1]
            ct = compute_dtype(gates)
            m = gates[..., 3 * H :].to(ct) * torch.tanh(c_steps.to(ct))  # projection input o ⊙ tanh c
            dw_hr = _sum_over_steps(grads.dh_steps, m).to(w_hr.dtype)
        return _only_needed(ctx, grads.dgx, dw_hh, grads.dh0, grads.dc0, dw_hr, None, None, None)


class GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, w_hh, b_hn, h0, lengths, ops: types.SimpleNamespace, record):
        out = ops.gru_fwd(gx, w_hh, b_hn, h0, lengths, training=True)
        ctx.save_for_backward(w_hh, h0, lengths, out.y, out.gates, out.ghn)
        ctx.ops, ctx.record, ctx.device_type = ops, record, gx.device.type
        ctx.set_materialize_grads(False)
        return out.y, out.h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n):
        with torch.autocast(device_type=ctx.device_type, enabled=False):
            return GRUFunction._backward(ctx, dy, dh_n)

    @staticmethod
    def _backward(ctx, dy, dh_n):
        w_hh, h0, lengths, y, gates, ghn = ctx.saved_tensors
        record = _recording(ctx)
        grads = ctx.ops.gru_bwd(dy, dh_n, w_hh, h0, y, gates, ghn, lengths, record=record is not None)
        if record is not None:
            record(StepGradients(grads.dh_steps, None, lengths))
        H = ghn.shape[-1]
        dw_hh = db_hn = None
        if ctx.needs_input_grad[1]:
            dgh = torch.cat((grads.dgx[..., : 2 * H], grads.dghn), dim=-1)  # hidden-side gates
            dw_hh = _sum_over_steps(dgh, previous_states(y, h0, lengths))
        if ctx.needs_input_grad[2]:
            db_hn = grads.dghn.sum(dim=(0, 1))
        return _only_needed(ctx, grads.dgx, dw_hh, db_hn, grads.dh0, None, None, None)
