"""GRU forward and BPTT backward as persistent Triton kernels (gate order r, z, n as torch.nn).

# T steps, B batch, D directions, H hidden, G = 3 gates; BB batch rows, BH units per tile, BK reduction tile

The structure of `kernels/lstm.py`: per step and tile of units, r and z from gx + h_{t-1} W_hhᵀ, the
candidate n = tanh(gx_n + r ⊙ (W_hn h_{t-1} + b_hn)), h_t = n + z ⊙ (h_{t-1} - n) into the other half
of a double buffer. The launchers have `kernels.reference`'s signatures and return values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from kernels._cells import gru_units_bwd
from kernels._config import alloc, check_contiguous, launch, launch_config, or_absent, step_gradients
from kernels._tiles import (
    carry_back,
    copy_rows,
    dot_rows_wt,
    join4,
    load_previous,
    load_state,
    load_tile,
    program_rows,
    resident_weights,
    seq_offset,
    sigmoid,
    split4,
    state_offset,
    step_grad,
    store_tile,
    tanh,
    total_step_grad,
)
from kernels.reference import GRUBackward, GRUForward
from kernels.split import split_backward, split_forward


@triton.jit
def _store_gates(ptr, row_off, j, row_mask, jm, H, a_r, a_z, a_n):
    # the three gate blocks of hidden units j, at columns j, H + j, 2H + j
    store_tile(ptr, row_off, j, row_mask, jm, a_r)
    store_tile(ptr, row_off, H + j, row_mask, jm, a_z)
    store_tile(ptr, row_off, 2 * H + j, row_mask, jm, a_n)


@triton.jit
def _save_gates(ptr, row_off, j, row_mask, jm, H, valid, r, z, n):
    # the activated gates saved for backward: zero at masked steps
    r, z, n = tl.where(valid, r, 0.0), tl.where(valid, z, 0.0), tl.where(valid, n, 0.0)
    _store_gates(ptr, row_off, j, row_mask, jm, H, r, z, n)


@triton.jit(do_not_specialize=["T"])
def _gru_fwd_kernel(
    gx_ptr,  # [T, B, D, 3H]
    w_hh_ptr,  # [D, 3H, H]
    b_hn_ptr,  # [D, H] (HAS_BHN)
    h0_ptr,  # [D, B, H] (HAS_H0)
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    y_ptr,  # [T, B, D, H]
    hn_ptr,  # [D, B, H]
    gates_ptr,  # [T, B, D, 3H] activated r, z, n (TRAINING)
    ghn_ptr,  # [T, B, D, H] W_hn h_{t-1} + b_hn (TRAINING)
    h_buf_ptr,  # [2, D, B, H] fp32: h_{t-1} and h_t
    T,
    B,
    H,
    HAS_BHN: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    TRAINING: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
):
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    w_hh = w_hh_ptr + d.to(tl.int64) * 3 * H * H
    st_h = state_offset(rows, B, d, H)
    buf_stride = D.to(tl.int64) * B * H
    copy_rows(h_buf_ptr, h0_ptr, st_h, row_mask, H, HAS_H0, BK)
    tl.debug_barrier()
    for s in range(T):
        t = tl.where(d == 0, s, T - 1 - s)
        valid = (row_mask & (t < length))[:, None]
        h_cur = h_buf_ptr + (s % 2) * buf_stride
        h_nxt = h_buf_ptr + ((s + 1) % 2) * buf_stride
        gx_rows = seq_offset(t, rows, B, D, d, 3 * H)
        y_rows = seq_offset(t, rows, B, D, d, H)
        for j0 in range(0, H, BH):
            j = j0 + tl.arange(0, BH)
            jm = j < H
            a_r = load_tile(gx_ptr, gx_rows, j, row_mask, jm)
            r = sigmoid(dot_rows_wt(a_r, h_cur, st_h, row_mask, H, w_hh, j, jm, PRECISION, BK))
            a_z = load_tile(gx_ptr, gx_rows, H + j, row_mask, jm)
            z = sigmoid(dot_rows_wt(a_z, h_cur, st_h, row_mask, H, w_hh, H + j, jm, PRECISION, BK))
            ghn = tl.zeros((BB, BH), dtype=tl.float32)
            if HAS_BHN:
                ghn += tl.load(b_hn_ptr + d.to(tl.int64) * H + j, mask=jm, other=0.0).to(tl.float32)[None, :]
            ghn = dot_rows_wt(ghn, h_cur, st_h, row_mask, H, w_hh, 2 * H + j, jm, PRECISION, BK)
            n = tanh(load_tile(gx_ptr, gx_rows, 2 * H + j, row_mask, jm) + r * ghn)
            h_prev = load_tile(h_cur, st_h, j, row_mask, jm)
            h = n + z * (h_prev - n)
            store_tile(h_nxt, st_h, j, row_mask, jm, tl.where(valid, h, h_prev))
            store_tile(y_ptr, y_rows, j, row_mask, jm, tl.where(valid, h, 0.0))
            if TRAINING:
                _save_gates(gates_ptr, gx_rows, j, row_mask, jm, H, valid, r, z, n)
                store_tile(ghn_ptr, y_rows, j, row_mask, jm, tl.where(valid, ghn, 0.0))
        tl.debug_barrier()
    copy_rows(hn_ptr, h_buf_ptr + (T % 2) * buf_stride, st_h, row_mask, H, True, BK)


@triton.jit(do_not_specialize=["T"])
def _gru_fwd_resident_kernel(
    gx_ptr,  # [T, B, D, 3H]
    w_hh_ptr,  # [D, 3H, H]
    b_hn_ptr,  # [D, H] (HAS_BHN)
    h0_ptr,  # [D, B, H] (HAS_H0)
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    y_ptr,  # [T, B, D, H]
    hn_ptr,  # [D, B, H]
    gates_ptr,  # [T, B, D, 3H] activated r, z, n (TRAINING)
    ghn_ptr,  # [T, B, D, H] W_hn h_{t-1} + b_hn (TRAINING)
    T,
    B,
    H,
    HAS_BHN: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    TRAINING: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
):
    # W_hh on chip for the whole loop (3 gates padded to 4), h in registers: one tile of BH >= H units
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    w_t = tl.trans(resident_weights(w_hh_ptr + d.to(tl.int64) * 3 * H * H, H, 3, 4, BH))  # [BH, 4BH]
    j = tl.arange(0, BH)
    jm = j < H
    st = state_offset(rows, B, d, H)
    h = load_state(h0_ptr, st, j, row_mask, jm, HAS_H0)  # [BB, BH] fp32
    b_hn = tl.zeros((BB, BH), dtype=tl.float32)
    if HAS_BHN:
        b_hn += tl.load(b_hn_ptr + d.to(tl.int64) * H + j, mask=jm, other=0.0).to(tl.float32)[None, :]
    for s in range(T):
        t = tl.where(d == 0, s, T - 1 - s)
        valid = (row_mask & (t < length))[:, None]
        gx_rows = seq_offset(t, rows, B, D, d, 3 * H)
        y_rows = seq_offset(t, rows, B, D, d, H)
        h_r, h_z, h_n, _ = split4(tl.dot(h, w_t, input_precision=PRECISION), BB, BH)
        r = sigmoid(load_tile(gx_ptr, gx_rows, j, row_mask, jm) + h_r)
        z = sigmoid(load_tile(gx_ptr, gx_rows, H + j, row_mask, jm) + h_z)
        ghn = h_n + b_hn
        n = tanh(load_tile(gx_ptr, gx_rows, 2 * H + j, row_mask, jm) + r * ghn)
        h_t = n + z * (h - n)
        store_tile(y_ptr, y_rows, j, row_mask, jm, tl.where(valid, h_t, 0.0))
        if TRAINING:
            _save_gates(gates_ptr, gx_rows, j, row_mask, jm, H, valid, r, z, n)
            store_tile(ghn_ptr, y_rows, j, row_mask, jm, tl.where(valid, ghn, 0.0))
        h = tl.where(valid, h_t, h)
    store_tile(hn_ptr, st, j, row_mask, jm, h)


@triton.jit(do_not_specialize=["T"])
def _gru_bwd_kernel(
    dy_ptr,  # [T, B, D, H] (HAS_DY)
    dhn_ptr,  # [D, B, H] (HAS_DHN)
    w_hh_ptr,  # [D, 3H, H]
    h0_ptr,  # [D, B, H] (HAS_H0)
    y_ptr,  # [T, B, D, H]
    gates_ptr,  # [T, B, D, 3H] activated r, z, n
    ghn_ptr,  # [T, B, D, H]
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    dgx_ptr,  # [T, B, D, 3H]
    dghn_ptr,  # [T, B, D, H]
    dh0_ptr,  # [D, B, H]
    dh_steps_ptr,  # [T, B, D, H] fp32 δh_t; with dh_step_stride = 0 a one-step scratch
    dh_buf_ptr,  # [D, B, H] fp32: the gradient carried back to h_{t-1}
    dg_buf_ptr,  # [D, B, 3H] fp32: this step's hidden-side gate gradients (r, z, ĥ_n)
    direct_buf_ptr,  # [D, B, H] fp32: δh_t ⊙ z, the gradient through the update gate's copy
    T,
    B,
    H,
    dh_step_stride,
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
):
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    first = tl.where(d == 0, 0, T - length)  # [BB] the loop step where each sequence starts
    w_hh = w_hh_ptr + d.to(tl.int64) * 3 * H * H
    st_h = state_offset(rows, B, d, H)
    st_g = state_offset(rows, B, d, 3 * H)
    copy_rows(dh_buf_ptr, dhn_ptr, st_h, row_mask, H, HAS_DHN, BK)
    tl.debug_barrier()
    for s_rev in range(T):
        s = T - 1 - s_rev
        t = tl.where(d == 0, s, T - 1 - s)
        is_valid = row_mask & (t < length)
        valid = is_valid[:, None]
        is_first = s == first
        gx_rows = seq_offset(t, rows, B, D, d, 3 * H)
        y_rows = seq_offset(t, rows, B, D, d, H)
        prev_rows = seq_offset(t + tl.where(d == 0, -1, 1), rows, B, D, d, H)
        dh_rows = t.to(tl.int64) * dh_step_stride + (rows * D + d) * H
        total_step_grad(
            dh_buf_ptr, dy_ptr, dh_steps_ptr, st_h, y_rows, dh_rows, row_mask, valid, H, HAS_DY, BK
        )
        tl.debug_barrier()
        for j0 in range(0, H, BH):
            j = j0 + tl.arange(0, BH)
            jm = j < H
            dh = load_tile(dh_steps_ptr, dh_rows, j, row_mask, jm)
            direct = gru_units_bwd(
                dh, gates_ptr, ghn_ptr, y_ptr, h0_ptr, dgx_ptr, dghn_ptr, dg_buf_ptr, gx_rows, y_rows,
                prev_rows, st_h, st_g, j, jm, row_mask, valid, is_valid, is_first, H, HAS_H0,
            )  # fmt: skip
            store_tile(direct_buf_ptr, st_h, j, row_mask, jm, direct)
        tl.debug_barrier()
        carry_back(
            dh_buf_ptr,
            dg_buf_ptr,
            w_hh,
            direct_buf_ptr,
            st_h,
            st_g,
            row_mask,
            valid,
            3 * H,
            H,
            True,
            PRECISION,
            BB,
            BH,
            BK,
        )
        tl.debug_barrier()
    copy_rows(dh0_ptr, dh_buf_ptr, st_h, row_mask, H, True, BK)


@triton.jit(do_not_specialize=["T"])
def _gru_bwd_resident_kernel(
    dy_ptr,  # [T, B, D, H] (HAS_DY)
    dhn_ptr,  # [D, B, H] (HAS_DHN)
    w_hh_ptr,  # [D, 3H, H]
    h0_ptr,  # [D, B, H] (HAS_H0)
    y_ptr,  # [T, B, D, H]
    gates_ptr,  # [T, B, D, 3H] activated r, z, n
    ghn_ptr,  # [T, B, D, H]
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    dgx_ptr,  # [T, B, D, 3H]
    dghn_ptr,  # [T, B, D, H]
    dh0_ptr,  # [D, B, H]
    dh_steps_ptr,  # [T, B, D, H] fp32 δh_t (RECORD)
    T,
    B,
    H,
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    RECORD: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
):
    # W_hh on chip (3 gates padded to 4), the carried δh in registers: one tile of BH >= H units
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    first = tl.where(d == 0, 0, T - length)  # [BB] the loop step where each sequence starts
    w = resident_weights(w_hh_ptr + d.to(tl.int64) * 3 * H * H, H, 3, 4, BH)  # [4BH, BH]
    j = tl.arange(0, BH)
    jm = j < H
    st = state_offset(rows, B, d, H)
    dh = load_state(dhn_ptr, st, j, row_mask, jm, HAS_DHN)  # [BB, BH] carried to h_t
    zero = tl.zeros((BB, BH), dtype=tl.float32)
    for s_rev in range(T):
        s = T - 1 - s_rev
        t = tl.where(d == 0, s, T - 1 - s)
        is_valid = row_mask & (t < length)
        valid = is_valid[:, None]
        gx_rows = seq_offset(t, rows, B, D, d, 3 * H)
        y_rows = seq_offset(t, rows, B, D, d, H)
        prev_rows = seq_offset(t + tl.where(d == 0, -1, 1), rows, B, D, d, H)
        dy = load_state(dy_ptr, y_rows, j, row_mask, jm, HAS_DY)
        dh_t = step_grad(dh, dy, dh_steps_ptr, y_rows, j, row_mask, jm, valid, RECORD)
        r = load_tile(gates_ptr, gx_rows, j, row_mask, jm)
        z = load_tile(gates_ptr, gx_rows, H + j, row_mask, jm)
        n = load_tile(gates_ptr, gx_rows, 2 * H + j, row_mask, jm)
        ghn = load_tile(ghn_ptr, y_rows, j, row_mask, jm)
        h_prev = load_previous(y_ptr, prev_rows, h0_ptr, st, j, jm, is_valid, s == first, HAS_H0)
        dn = tl.where(valid, dh_t * (1.0 - z) * (1.0 - n * n), 0.0)
        dr = tl.where(valid, dn * ghn * r * (1.0 - r), 0.0)
        dz = tl.where(valid, dh_t * (h_prev - n) * z * (1.0 - z), 0.0)
        dghn = dn * r
        _store_gates(dgx_ptr, gx_rows, j, row_mask, jm, H, dr, dz, dn)
        store_tile(dghn_ptr, y_rows, j, row_mask, jm, dghn)
        carried = dh_t * z + tl.dot(join4(dr, dz, dghn, zero, BB, BH), w, input_precision=PRECISION)
        dh = tl.where(valid, carried, dh)
    store_tile(dh0_ptr, st, j, row_mask, jm, dh)


def gru_fwd(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    b_hn: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    *,
    training: bool = True,
    precision: str = "ieee",
) -> GRUForward:
    """The Triton twin of `kernels.reference.gru_fwd`: same arguments, same return values."""
    T, B, D, G = gx.shape
    H = G // 3
    check_contiguous("gru_fwd", gx=gx, w_hh=w_hh, b_hn=b_hn, h0=h0, lengths=lengths)
    cfg = launch_config(B, H, H, 3, gx, precision, D=D)
    if cfg.path == "split":
        y, h_n, _, gates, ghn = split_forward(
            "gru", cfg, gx, w_hh, h0=h0, b_hn=b_hn, lengths=lengths, training=training
        )
        return GRUForward(y, h_n, gates, ghn)
    y, h_n = alloc((T, B, D, H), gx), alloc((D, B, H), gx)
    gates = alloc((T, B, D, G), gx) if training else None
    ghn = alloc((T, B, D, H), gx) if training else None
    absent = gx
    if cfg.resident:
        launch(
            wrap_triton(_gru_fwd_resident_kernel), (triton.cdiv(B, cfg.BB), D),
            gx, w_hh, or_absent(b_hn, absent),
            or_absent(h0, absent), or_absent(lengths, absent),
            y, h_n, or_absent(gates, absent), or_absent(ghn, absent),
            T, B, H,
            HAS_BHN=b_hn is not None, HAS_H0=h0 is not None, HAS_LENGTHS=lengths is not None,
            TRAINING=training, PRECISION=cfg.PRECISION, BB=cfg.BB, BH=cfg.BH, num_warps=cfg.num_warps,
        )  # fmt: skip
        return GRUForward(y, h_n, gates, ghn)
    launch(
        wrap_triton(_gru_fwd_kernel), (triton.cdiv(B, cfg.BB), D),
        gx, w_hh, or_absent(b_hn, absent),
        or_absent(h0, absent), or_absent(lengths, absent),
        y, h_n, or_absent(gates, absent), or_absent(ghn, absent),
        alloc((2, D, B, H), gx, torch.float32),
        T, B, H,
        HAS_BHN=b_hn is not None, HAS_H0=h0 is not None, HAS_LENGTHS=lengths is not None,
        TRAINING=training, PRECISION=cfg.PRECISION, BB=cfg.BB, BH=cfg.BH, BK=cfg.BK, num_warps=cfg.num_warps,
    )  # fmt: skip
    return GRUForward(y, h_n, gates, ghn)


def gru_bwd(
    dy: torch.Tensor | None,
    dh_n: torch.Tensor | None,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None,
    y: torch.Tensor,
    gates: torch.Tensor,
    ghn: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    record: bool = False,
    precision: str = "ieee",
) -> GRUBackward:
    """The Triton twin of `kernels.reference.gru_bwd`: same arguments, same return values."""
    T, B, D, G = gates.shape
    H = G // 3
    check_contiguous(
        "gru_bwd", dy=dy, dh_n=dh_n, w_hh=w_hh, h0=h0, y=y, gates=gates, ghn=ghn, lengths=lengths
    )
    cfg = launch_config(B, H, H, 3, gates, precision, D=D, backward=True)
    if cfg.path == "split":
        dgx, dghn, dh0, _, dh_steps, _ = split_backward(
            "gru", cfg, dy, dh_n, w_hh, y=y, h0=h0, gates=gates, aux=ghn, lengths=lengths, record=record
        )
        return GRUBackward(dgx, dghn, dh0, dh_steps)
    f32 = torch.float32
    dgx, dghn, dh0 = alloc((T, B, D, G), gates), alloc((T, B, D, H), gates), alloc((D, B, H), gates)
    dh_steps, dh_step_stride = step_gradients(record, T, B, D, H, gates)
    absent = gates
    if cfg.resident:
        launch(
            wrap_triton(_gru_bwd_resident_kernel), (triton.cdiv(B, cfg.BB), D),
            or_absent(dy, absent), or_absent(dh_n, absent),
            w_hh, or_absent(h0, absent), y,
            gates, ghn, or_absent(lengths, absent),
            dgx, dghn, dh0, dh_steps,
            T, B, H,
            HAS_DY=dy is not None, HAS_DHN=dh_n is not None, HAS_H0=h0 is not None,
            HAS_LENGTHS=lengths is not None, RECORD=record, PRECISION=cfg.PRECISION,
            BB=cfg.BB, BH=cfg.BH, num_warps=cfg.num_warps,
        )  # fmt: skip
        return GRUBackward(dgx, dghn, dh0, dh_steps if record else None)
    launch(
        wrap_triton(_gru_bwd_kernel), (triton.cdiv(B, cfg.BB), D),
        or_absent(dy, absent), or_absent(dh_n, absent),
        w_hh, or_absent(h0, absent), y,
        gates, ghn, or_absent(lengths, absent),
        dgx, dghn, dh0, dh_steps,
        alloc((D, B, H), gates, f32), alloc((D, B, G), gates, f32), alloc((D, B, H), gates, f32),
        T, B, H, dh_step_stride,
        HAS_DY=dy is not None, HAS_DHN=dh_n is not None, HAS_H0=h0 is not None,
        HAS_LENGTHS=lengths is not None, PRECISION=cfg.PRECISION,
        BB=cfg.BB, BH=cfg.BH, BK=cfg.BK, num_warps=cfg.num_warps,
    )  # fmt: skip
    return GRUBackward(dgx, dghn, dh0, dh_steps if record else None)
