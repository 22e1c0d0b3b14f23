"""Elman RNN (tanh or relu) forward and BPTT backward as persistent Triton kernels.

# T steps, B batch, D directions, H hidden; BB batch rows per program, BH units per tile, BK reduction tile

The structure of `kernels/lstm.py` with one gate: per step, h_t = act(gx_t + h_{t-1} W_hhᵀ) tile by
tile into the other half of a double buffer. The launchers have `kernels.reference`'s signatures.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from kernels._cells import rnn_units_bwd
from kernels._config import alloc, check_contiguous, launch, launch_config, or_absent, step_gradients
from kernels._tiles import (
    carry_back,
    copy_rows,
    dot_rows_wt,
    load_state,
    load_tile,
    program_rows,
    resident_weights,
    seq_offset,
    state_offset,
    step_grad,
    store_tile,
    tanh,
    total_step_grad,
)
from kernels.reference import RNNBackward, RNNForward
from kernels.split import split_backward, split_forward


@triton.jit(do_not_specialize=["T"])
def _rnn_fwd_kernel(
    gx_ptr,  # [T, B, D, H]
    w_hh_ptr,  # [D, H, H]
    h0_ptr,  # [D, B, H] (HAS_H0)
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    y_ptr,  # [T, B, D, H]
    hn_ptr,  # [D, B, H]
    h_buf_ptr,  # [2, D, B, H] fp32: h_{t-1} and h_t
    T,
    B,
    H,
    RELU: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
):
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    w_hh = w_hh_ptr + d.to(tl.int64) * H * H
    st_h = state_offset(rows, B, d, H)
    buf_stride = D.to(tl.int64) * B * H
    copy_rows(h_buf_ptr, h0_ptr, st_h, row_mask, H, HAS_H0, BK)
    tl.debug_barrier()
    for s in range(T):
        t = tl.where(d == 0, s, T - 1 - s)
        valid = (row_mask & (t < length))[:, None]
        h_cur = h_buf_ptr + (s % 2) * buf_stride
        h_nxt = h_buf_ptr + ((s + 1) % 2) * buf_stride
        rows_t = seq_offset(t, rows, B, D, d, H)  # gx and y share the layout
        for j0 in range(0, H, BH):
            j = j0 + tl.arange(0, BH)
            jm = j < H
            a = load_tile(gx_ptr, rows_t, j, row_mask, jm)
            a = dot_rows_wt(a, h_cur, st_h, row_mask, H, w_hh, j, jm, PRECISION, BK)
            if RELU:
                h = tl.maximum(a, 0.0)
            else:
                h = tanh(a)
            h_prev = load_tile(h_cur, st_h, j, row_mask, jm)
            store_tile(h_nxt, st_h, j, row_mask, jm, tl.where(valid, h, h_prev))
            store_tile(y_ptr, rows_t, j, row_mask, jm, tl.where(valid, h, 0.0))
        tl.debug_barrier()
    copy_rows(hn_ptr, h_buf_ptr + (T % 2) * buf_stride, st_h, row_mask, H, True, BK)


@triton.jit(do_not_specialize=["T"])
def _rnn_fwd_resident_kernel(
    gx_ptr,  # [T, B, D, H]
    w_hh_ptr,  # [D, H, H]
    h0_ptr,  # [D, B, H] (HAS_H0)
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    y_ptr,  # [T, B, D, H]
    hn_ptr,  # [D, B, H]
    T,
    B,
    H,
    RELU: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
):
    # W_hh on chip for the whole loop, h in registers: one tile of BH >= H units
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    w_t = tl.trans(resident_weights(w_hh_ptr + d.to(tl.int64) * H * H, H, 1, 1, BH))  # [BH, BH]
    j = tl.arange(0, BH)
    jm = j < H
    st = state_offset(rows, B, d, H)
    h = load_state(h0_ptr, st, j, row_mask, jm, HAS_H0)  # [BB, BH] fp32
    for s in range(T):
        t = tl.where(d == 0, s, T - 1 - s)
        valid = (row_mask & (t < length))[:, None]
        rows_t = seq_offset(t, rows, B, D, d, H)  # gx and y share the layout
        a = load_tile(gx_ptr, rows_t, j, row_mask, jm) + tl.dot(h, w_t, input_precision=PRECISION)
        if RELU:
            h_t = tl.maximum(a, 0.0)
        else:
            h_t = tanh(a)
        store_tile(y_ptr, rows_t, j, row_mask, jm, tl.where(valid, h_t, 0.0))
        h = tl.where(valid, h_t, h)
    store_tile(hn_ptr, st, j, row_mask, jm, h)


@triton.jit(do_not_specialize=["T"])
def _rnn_bwd_kernel(
    dy_ptr,  # [T, B, D, H] (HAS_DY)
    dhn_ptr,  # [D, B, H] (HAS_DHN)
    y_ptr,  # [T, B, D, H]
    w_hh_ptr,  # [D, H, H]
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    dgx_ptr,  # [T, B, D, H]
    dh0_ptr,  # [D, B, H]
    dh_steps_ptr,  # [T, B, D, H] fp32 δh_t; with dh_step_stride = 0 a one-step scratch
    dh_buf_ptr,  # [D, B, H] fp32: the gradient carried back to h_{t-1}
    dg_buf_ptr,  # [D, B, H] fp32: this step's pre-activation gradient
    T,
    B,
    H,
    dh_step_stride,
    RELU: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
):
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    w_hh = w_hh_ptr + d.to(tl.int64) * H * H
    st_h = state_offset(rows, B, d, H)
    copy_rows(dh_buf_ptr, dhn_ptr, st_h, row_mask, H, HAS_DHN, BK)
    tl.debug_barrier()
    for s_rev in range(T):
        s = T - 1 - s_rev
        t = tl.where(d == 0, s, T - 1 - s)
        valid = (row_mask & (t < length))[:, None]
        rows_t = seq_offset(t, rows, B, D, d, H)
        dh_rows = t.to(tl.int64) * dh_step_stride + (rows * D + d) * H
        total_step_grad(
            dh_buf_ptr, dy_ptr, dh_steps_ptr, st_h, rows_t, dh_rows, row_mask, valid, H, HAS_DY, BK
        )
        tl.debug_barrier()
        for j0 in range(0, H, BH):
            j = j0 + tl.arange(0, BH)
            jm = j < H
            dh = load_tile(dh_steps_ptr, dh_rows, j, row_mask, jm)
            da = rnn_units_bwd(dh, y_ptr, rows_t, j, jm, row_mask, valid, RELU)
            store_tile(dgx_ptr, rows_t, j, row_mask, jm, da)
            store_tile(dg_buf_ptr, st_h, j, row_mask, jm, da)
        tl.debug_barrier()
        carry_back(
            dh_buf_ptr,
            dg_buf_ptr,
            w_hh,
            dh_buf_ptr,
            st_h,
            st_h,
            row_mask,
            valid,
            H,
            H,
            False,
            PRECISION,
            BB,
            BH,
            BK,
        )
        tl.debug_barrier()
    copy_rows(dh0_ptr, dh_buf_ptr, st_h, row_mask, H, True, BK)


@triton.jit(do_not_specialize=["T"])
def _rnn_bwd_resident_kernel(
    dy_ptr,  # [T, B, D, H] (HAS_DY)
    dhn_ptr,  # [D, B, H] (HAS_DHN)
    y_ptr,  # [T, B, D, H]
    w_hh_ptr,  # [D, H, H]
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    dgx_ptr,  # [T, B, D, H]
    dh0_ptr,  # [D, B, H]
    dh_steps_ptr,  # [T, B, D, H] fp32 δh_t (RECORD)
    T,
    B,
    H,
    RELU: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    RECORD: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
):
    # W_hh on chip, the carried δh in registers: one tile of BH >= H units
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    w = resident_weights(w_hh_ptr + d.to(tl.int64) * H * H, H, 1, 1, BH)  # [BH, BH]
    j = tl.arange(0, BH)
    jm = j < H
    st = state_offset(rows, B, d, H)
    dh = load_state(dhn_ptr, st, j, row_mask, jm, HAS_DHN)  # [BB, BH] carried to h_t
    for s_rev in range(T):
        s = T - 1 - s_rev
        t = tl.where(d == 0, s, T - 1 - s)
        valid = (row_mask & (t < length))[:, None]
        rows_t = seq_offset(t, rows, B, D, d, H)
        dy = load_state(dy_ptr, rows_t, j, row_mask, jm, HAS_DY)
        dh_t = step_grad(dh, dy, dh_steps_ptr, rows_t, j, row_mask, jm, valid, RECORD)
        da = rnn_units_bwd(dh_t, y_ptr, rows_t, j, jm, row_mask, valid, RELU)
        store_tile(dgx_ptr, rows_t, j, row_mask, jm, da)
        dh = tl.where(valid, tl.dot(da, w, input_precision=PRECISION), dh)
    store_tile(dh0_ptr, st, j, row_mask, jm, dh)


def rnn_fwd(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    *,
    nonlinearity: str = "tanh",
    training: bool = True,
    precision: str = "ieee",
) -> RNNForward:
    """The Triton twin of `kernels.reference.rnn_fwd`: same arguments, same return values."""
    T, B, D, H = gx.shape
    check_contiguous("rnn_fwd", gx=gx, w_hh=w_hh, h0=h0, lengths=lengths)
    cfg = launch_config(B, H, H, 1, gx, precision, D=D)
    if cfg.path == "split":
        y, h_n, *_ = split_forward(f"rnn_{nonlinearity}", cfg, gx, w_hh, h0=h0, lengths=lengths)
        return RNNForward(y, h_n)
    y, h_n = alloc((T, B, D, H), gx), alloc((D, B, H), gx)
    absent = gx
    if cfg.resident:
        launch(
            wrap_triton(_rnn_fwd_resident_kernel), (triton.cdiv(B, cfg.BB), D),
            gx, w_hh, or_absent(h0, absent), or_absent(lengths, absent),
            y, h_n, T, B, H,
            RELU=nonlinearity == "relu", HAS_H0=h0 is not None, HAS_LENGTHS=lengths is not None,
            PRECISION=cfg.PRECISION, BB=cfg.BB, BH=cfg.BH, num_warps=cfg.num_warps,
        )  # fmt: skip
        return RNNForward(y, h_n)
    launch(
        wrap_triton(_rnn_fwd_kernel), (triton.cdiv(B, cfg.BB), D),
        gx, w_hh, or_absent(h0, absent),
        or_absent(lengths, absent), y, h_n, alloc((2, D, B, H), gx, torch.float32),
        T, B, H,
        RELU=nonlinearity == "relu", HAS_H0=h0 is not None, HAS_LENGTHS=lengths is not None,
        PRECISION=cfg.PRECISION, BB=cfg.BB, BH=cfg.BH, BK=cfg.BK, num_warps=cfg.num_warps,
    )  # fmt: skip
    return RNNForward(y, h_n)


def rnn_bwd(
    dy: torch.Tensor | None,
    dh_n: torch.Tensor | None,
    y: torch.Tensor,
    w_hh: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    nonlinearity: str = "tanh",
    record: bool = False,
    precision: str = "ieee",
) -> RNNBackward:
    """The Triton twin of `kernels.reference.rnn_bwd`: same arguments, same return values."""
    T, B, D, H = y.shape
    check_contiguous("rnn_bwd", dy=dy, dh_n=dh_n, y=y, w_hh=w_hh, lengths=lengths)
    cfg = launch_config(B, H, H, 1, y, precision, D=D, backward=True)
    if cfg.path == "split":
        dgx, _, dh0, _, dh_steps, _ = split_backward(
            f"rnn_{nonlinearity}", cfg, dy, dh_n, w_hh, y=y, lengths=lengths, record=record
        )
        return RNNBackward(dgx, dh0, dh_steps)
    f32 = torch.float32
    dgx, dh0 = alloc((T, B, D, H), y), alloc((D, B, H), y)
    dh_steps, dh_step_stride = step_gradients(record, T, B, D, H, y)
    absent = y
    if cfg.resident:
        launch(
            wrap_triton(_rnn_bwd_resident_kernel), (triton.cdiv(B, cfg.BB), D),
            or_absent(dy, absent), or_absent(dh_n, absent), y, w_hh,
            or_absent(lengths, absent), dgx, dh0, dh_steps, T, B, H,
            RELU=nonlinearity == "relu", HAS_DY=dy is not None, HAS_DHN=dh_n is not None,
            HAS_LENGTHS=lengths is not None, RECORD=record, PRECISION=cfg.PRECISION,
            BB=cfg.BB, BH=cfg.BH, num_warps=cfg.num_warps,
        )  # fmt: skip
        return RNNBackward(dgx, dh0, dh_steps if record else None)
    launch(
        wrap_triton(_rnn_bwd_kernel), (triton.cdiv(B, cfg.BB), D),
        or_absent(dy, absent), or_absent(dh_n, absent),
        y, w_hh, or_absent(lengths, absent),
        dgx, dh0, dh_steps, alloc((D, B, H), y, f32), alloc((D, B, H), y, f32),
        T, B, H, dh_step_stride,
        RELU=nonlinearity == "relu", HAS_DY=dy is not None, HAS_DHN=dh_n is not None,
        HAS_LENGTHS=lengths is not None, PRECISION=cfg.PRECISION,
        BB=cfg.BB, BH=cfg.BH, BK=cfg.BK, num_warps=cfg.num_warps,
    )  # fmt: skip
    return RNNBackward(dgx, dh0, dh_steps if record else None)
