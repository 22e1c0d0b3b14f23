"""LSTM forward and BPTT backward as persistent Triton kernels (one launch each for all T steps).

# T steps, B batch, D directions, H hidden, P recurrent width (H or proj_size), G = 4 gates (i, f, g, o)
# BB batch rows per program, BH hidden units per tile, BK reduction tile

One program per (batch tile, direction) walks the whole sequence. Per step, for each tile of BH
hidden units it computes the four gates of those units (gx + h_{t-1} W_hhᵀ, W_hh read in tiles),
updates c, and writes h_t into the other half of a double buffer, so tiles still reading h_{t-1}
see it unchanged. The launchers have `kernels.reference`'s signatures and return values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from kernels._cells import lstm_units_bwd
from kernels._config import alloc, check_contiguous, launch, launch_config, or_absent, step_gradients
from kernels._tiles import (
    carry_back,
    copy_rows,
    dot_rows_w,
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
from kernels.reference import LSTMBackward, LSTMForward
from kernels.split import split_backward, split_forward


@triton.jit
def _gate_preact(
    gx_ptr,
    gx_rows,
    cols,
    col_mask,
    h_ptr,
    h_rows,
    row_mask,
    w_ptr,
    P,
    PRECISION: tl.constexpr,
    BK: tl.constexpr,
):
    # [BB, BH] pre-activation of gate columns `cols`: gx + h_{t-1} @ W_hh[cols]ᵀ
    acc = load_tile(gx_ptr, gx_rows, cols, row_mask, col_mask)
    return dot_rows_wt(acc, h_ptr, h_rows, row_mask, P, w_ptr, cols, col_mask, PRECISION, BK)


@triton.jit
def _store_gates(ptr, row_off, j, row_mask, jm, H, a_i, a_f, a_g, a_o):
    # the four gate blocks of hidden units j, at columns j, H + j, 2H + j, 3H + j
    store_tile(ptr, row_off, j, row_mask, jm, a_i)
    store_tile(ptr, row_off, H + j, row_mask, jm, a_f)
    store_tile(ptr, row_off, 2 * H + j, row_mask, jm, a_g)
    store_tile(ptr, row_off, 3 * H + j, row_mask, jm, a_o)


@triton.jit
def _save_gates(ptr, row_off, j, row_mask, jm, H, valid, i, f, g, o):
    # the activated gates saved for backward: zero at masked steps
    _store_gates(
        ptr, row_off, j, row_mask, jm, H,
        tl.where(valid, i, 0.0), tl.where(valid, f, 0.0), tl.where(valid, g, 0.0), tl.where(valid, o, 0.0),
    )  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def _lstm_fwd_kernel(
    gx_ptr,  # [T, B, D, 4H]
    w_hh_ptr,  # [D, 4H, P]
    w_hr_ptr,  # [D, P, H] (PROJ)
    h0_ptr,  # [D, B, P] (HAS_H0)
    c0_ptr,  # [D, B, H] (HAS_C0)
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    y_ptr,  # [T, B, D, P]
    hn_ptr,  # [D, B, P]
    cn_ptr,  # [D, B, H]
    gates_ptr,  # [T, B, D, 4H] activated (TRAINING)
    c_steps_ptr,  # [T, B, D, H] (TRAINING)
    h_buf_ptr,  # [2, D, B, P] fp32: h_{t-1} and h_t
    c_buf_ptr,  # [D, B, H] fp32
    m_buf_ptr,  # [D, B, H] fp32: o ⊙ tanh(c_t) before the projection (PROJ)
    T,
    B,
    H,
    P,
    HAS_H0: tl.constexpr,
    HAS_C0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    PROJ: tl.constexpr,
    TRAINING: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
):
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    w_hh = w_hh_ptr + d.to(tl.int64) * 4 * H * P
    w_hr = w_hr_ptr + d.to(tl.int64) * P * H
    st_h = state_offset(rows, B, d, P)
    st_c = state_offset(rows, B, d, H)
    buf_stride = D.to(tl.int64) * B * P  # one half of the h double buffer
    copy_rows(h_buf_ptr, h0_ptr, st_h, row_mask, P, HAS_H0, BK)
    copy_rows(c_buf_ptr, c0_ptr, st_c, row_mask, H, HAS_C0, BH)
    tl.debug_barrier()
    for s in range(T):
        t = tl.where(d == 0, s, T - 1 - s)
        valid = (row_mask & (t < length))[:, None]  # [BB, 1]: a masked step keeps the state
        h_cur = h_buf_ptr + (s % 2) * buf_stride
        h_nxt = h_buf_ptr + ((s + 1) % 2) * buf_stride
        gx_rows = seq_offset(t, rows, B, D, d, 4 * H)
        c_rows = seq_offset(t, rows, B, D, d, H)
        y_rows = seq_offset(t, rows, B, D, d, P)
        for j0 in range(0, H, BH):
            j = j0 + tl.arange(0, BH)
            jm = j < H
            i = sigmoid(_gate_preact(gx_ptr, gx_rows, j, jm, h_cur, st_h, row_mask, w_hh, P, PRECISION, BK))
            f = sigmoid(
                _gate_preact(gx_ptr, gx_rows, H + j, jm, h_cur, st_h, row_mask, w_hh, P, PRECISION, BK)
            )
            g = tanh(
                _gate_preact(gx_ptr, gx_rows, 2 * H + j, jm, h_cur, st_h, row_mask, w_hh, P, PRECISION, BK)
            )
            o = sigmoid(
                _gate_preact(gx_ptr, gx_rows, 3 * H + j, jm, h_cur, st_h, row_mask, w_hh, P, PRECISION, BK)
            )
            c_prev = load_tile(c_buf_ptr, st_c, j, row_mask, jm)
            c = f * c_prev + i * g
            m = o * tanh(c)
            store_tile(c_buf_ptr, st_c, j, row_mask, jm, tl.where(valid, c, c_prev))
            if TRAINING:
                _save_gates(gates_ptr, gx_rows, j, row_mask, jm, H, valid, i, f, g, o)
                store_tile(c_steps_ptr, c_rows, j, row_mask, jm, tl.where(valid, c, 0.0))
            if PROJ:
                store_tile(m_buf_ptr, st_c, j, row_mask, jm, m)
            else:
                h_prev = load_tile(h_cur, st_h, j, row_mask, jm)
                store_tile(h_nxt, st_h, j, row_mask, jm, tl.where(valid, m, h_prev))
                store_tile(y_ptr, y_rows, j, row_mask, jm, tl.where(valid, m, 0.0))
        if PROJ:
            tl.debug_barrier()  # every unit's m_t is written before the projection reads it
            for p0 in range(0, P, BH):
                p = p0 + tl.arange(0, BH)
                pm = p < P
                h = dot_rows_wt(
                    tl.zeros((BB, BH), dtype=tl.float32),
                    m_buf_ptr,
                    st_c,
                    row_mask,
                    H,
                    w_hr,
                    p,
                    pm,
                    PRECISION,
                    BK,
                )
                h_prev = load_tile(h_cur, st_h, p, row_mask, pm)
                store_tile(h_nxt, st_h, p, row_mask, pm, tl.where(valid, h, h_prev))
                store_tile(y_ptr, y_rows, p, row_mask, pm, tl.where(valid, h, 0.0))
        tl.debug_barrier()  # h_t complete before step t+1 reads it
    copy_rows(hn_ptr, h_buf_ptr + (T % 2) * buf_stride, st_h, row_mask, P, True, BK)
    copy_rows(cn_ptr, c_buf_ptr, st_c, row_mask, H, True, BH)


@triton.jit(do_not_specialize=["T"])
def _lstm_fwd_resident_kernel(
    gx_ptr,  # [T, B, D, 4H]
    w_hh_ptr,  # [D, 4H, H]
    h0_ptr,  # [D, B, H] (HAS_H0)
    c0_ptr,  # [D, B, H] (HAS_C0)
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    y_ptr,  # [T, B, D, H]
    hn_ptr,  # [D, B, H]
    cn_ptr,  # [D, B, H]
    gates_ptr,  # [T, B, D, 4H] activated (TRAINING)
    c_steps_ptr,  # [T, B, D, H] (TRAINING)
    T,
    B,
    H,
    HAS_H0: tl.constexpr,
    HAS_C0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    TRAINING: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
):
    # W_hh on chip for the whole loop, h and c in registers: one tile of BH >= H units, no projection
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    w_t = tl.trans(resident_weights(w_hh_ptr + d.to(tl.int64) * 4 * H * H, H, 4, 4, BH))  # [BH, 4BH]
    j = tl.arange(0, BH)
    jm = j < H
    st = state_offset(rows, B, d, H)
    h = load_state(h0_ptr, st, j, row_mask, jm, HAS_H0)  # [BB, BH] fp32
    c = load_state(c0_ptr, st, j, row_mask, jm, HAS_C0)
    for s in range(T):
        t = tl.where(d == 0, s, T - 1 - s)
        valid = (row_mask & (t < length))[:, None]
        gx_rows = seq_offset(t, rows, B, D, d, 4 * H)
        y_rows = seq_offset(t, rows, B, D, d, H)
        a_i, a_f, a_g, a_o = split4(tl.dot(h, w_t, input_precision=PRECISION), BB, BH)
        i = sigmoid(load_tile(gx_ptr, gx_rows, j, row_mask, jm) + a_i)
        f = sigmoid(load_tile(gx_ptr, gx_rows, H + j, row_mask, jm) + a_f)
        g = tanh(load_tile(gx_ptr, gx_rows, 2 * H + j, row_mask, jm) + a_g)
        o = sigmoid(load_tile(gx_ptr, gx_rows, 3 * H + j, row_mask, jm) + a_o)
        c_t = f * c + i * g
        h_t = o * tanh(c_t)
        store_tile(y_ptr, y_rows, j, row_mask, jm, tl.where(valid, h_t, 0.0))
        if TRAINING:
            _save_gates(gates_ptr, gx_rows, j, row_mask, jm, H, valid, i, f, g, o)
            store_tile(c_steps_ptr, y_rows, j, row_mask, jm, tl.where(valid, c_t, 0.0))
        c = tl.where(valid, c_t, c)
        h = tl.where(valid, h_t, h)
    store_tile(hn_ptr, st, j, row_mask, jm, h)
    store_tile(cn_ptr, st, j, row_mask, jm, c)


@triton.jit(do_not_specialize=["T"])
def _lstm_bwd_kernel(
    dy_ptr,  # [T, B, D, P] (HAS_DY)
    dhn_ptr,  # [D, B, P] (HAS_DHN)
    dcn_ptr,  # [D, B, H] (HAS_DCN)
    w_hh_ptr,  # [D, 4H, P]
    w_hr_ptr,  # [D, P, H] (PROJ)
    c0_ptr,  # [D, B, H] (HAS_C0)
    gates_ptr,  # [T, B, D, 4H] activated
    c_steps_ptr,  # [T, B, D, H]
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    dgx_ptr,  # [T, B, D, 4H]
    dh0_ptr,  # [D, B, P]
    dc0_ptr,  # [D, B, H]
    dh_steps_ptr,  # [T, B, D, P] fp32 δh_t; with dh_step_stride = 0 a one-step scratch
    dc_steps_ptr,  # [T, B, D, H] fp32 δc_t (RECORD)
    dh_buf_ptr,  # [D, B, P] fp32: the gradient carried back to h_{t-1}
    dc_buf_ptr,  # [D, B, H] fp32: the gradient carried back to c_{t-1}
    dg_buf_ptr,  # [D, B, 4H] fp32: this step's gate gradients, for the recurrent product
    T,
    B,
    H,
    P,
    dh_step_stride,
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_DCN: tl.constexpr,
    HAS_C0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    PROJ: tl.constexpr,
    RECORD: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
):
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    first = tl.where(d == 0, 0, T - length)  # [BB] the loop step where each sequence starts
    w_hh = w_hh_ptr + d.to(tl.int64) * 4 * H * P
    w_hr = w_hr_ptr + d.to(tl.int64) * P * H
    st_h = state_offset(rows, B, d, P)
    st_c = state_offset(rows, B, d, H)
    st_g = state_offset(rows, B, d, 4 * H)
    copy_rows(dh_buf_ptr, dhn_ptr, st_h, row_mask, P, HAS_DHN, BK)
    copy_rows(dc_buf_ptr, dcn_ptr, st_c, row_mask, H, HAS_DCN, BH)
    tl.debug_barrier()
    for s_rev in range(T):
        s = T - 1 - s_rev
        t = tl.where(d == 0, s, T - 1 - s)
        is_valid = row_mask & (t < length)
        valid = is_valid[:, None]
        is_first = s == first
        t_prev = t + tl.where(d == 0, -1, 1)  # the step processed just before t
        gx_rows = seq_offset(t, rows, B, D, d, 4 * H)
        c_rows = seq_offset(t, rows, B, D, d, H)
        c_prev_rows = seq_offset(t_prev, rows, B, D, d, H)
        dh_rows = t.to(tl.int64) * dh_step_stride + (rows * D + d) * P
        dy_rows = seq_offset(t, rows, B, D, d, P)
        total_step_grad(
            dh_buf_ptr, dy_ptr, dh_steps_ptr, st_h, dy_rows, dh_rows, row_mask, valid, P, HAS_DY, BK
        )
        tl.debug_barrier()
        for j0 in range(0, H, BH):
            j = j0 + tl.arange(0, BH)
            jm = j < H
            if PROJ:  # δm = δh W_hr
                dm = dot_rows_w(
                    tl.zeros((BB, BH), dtype=tl.float32),
                    dh_steps_ptr,
                    dh_rows,
                    row_mask,
                    P,
                    w_hr,
                    H,
                    j,
                    jm,
                    PRECISION,
                    BK,
                )
            else:
                dm = load_tile(dh_steps_ptr, dh_rows, j, row_mask, jm)
            lstm_units_bwd(
                dm, gates_ptr, c_steps_ptr, c0_ptr, dc_buf_ptr, dc_steps_ptr, dgx_ptr, dg_buf_ptr, gx_rows,
                c_rows, c_prev_rows, st_c, st_g, j, jm, row_mask, valid, is_valid, is_first, H, HAS_C0,
                RECORD,
            )  # fmt: skip
        tl.debug_barrier()
        carry_back(
            dh_buf_ptr,
            dg_buf_ptr,
            w_hh,
            dh_buf_ptr,
            st_h,
            st_g,
            row_mask,
            valid,
            4 * H,
            P,
            False,
            PRECISION,
            BB,
            BH,
            BK,
        )
        tl.debug_barrier()
    copy_rows(dh0_ptr, dh_buf_ptr, st_h, row_mask, P, True, BK)
    copy_rows(dc0_ptr, dc_buf_ptr, st_c, row_mask, H, True, BH)


@triton.jit(do_not_specialize=["T"])
def _lstm_bwd_resident_kernel(
    dy_ptr,  # [T, B, D, H] (HAS_DY)
    dhn_ptr,  # [D, B, H] (HAS_DHN)
    dcn_ptr,  # [D, B, H] (HAS_DCN)
    w_hh_ptr,  # [D, 4H, H]
    c0_ptr,  # [D, B, H] (HAS_C0)
    gates_ptr,  # [T, B, D, 4H] activated
    c_steps_ptr,  # [T, B, D, H]
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    dgx_ptr,  # [T, B, D, 4H]
    dh0_ptr,  # [D, B, H]
    dc0_ptr,  # [D, B, H]
    dh_steps_ptr,  # [T, B, D, H] fp32 δh_t (RECORD)
    dc_steps_ptr,  # [T, B, D, H] fp32 δc_t (RECORD)
    T,
    B,
    H,
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_DCN: tl.constexpr,
    HAS_C0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    RECORD: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
):
    # W_hh on chip, the carried δh and δc in registers: one tile of BH >= H units, no projection
    d, D, rows, row_mask = program_rows(B, BB)
    length = tl.load(len_ptr + rows, mask=row_mask & HAS_LENGTHS, other=T).to(tl.int64)  # [BB] steps
    first = tl.where(d == 0, 0, T - length)  # [BB] the loop step where each sequence starts
    w = resident_weights(w_hh_ptr + d.to(tl.int64) * 4 * H * H, H, 4, 4, BH)  # [4BH, BH]
    j = tl.arange(0, BH)
    jm = j < H
    st = state_offset(rows, B, d, H)
    dh = load_state(dhn_ptr, st, j, row_mask, jm, HAS_DHN)  # [BB, BH] carried to h_t
    dc = load_state(dcn_ptr, st, j, row_mask, jm, HAS_DCN)
    for s_rev in range(T):
        s = T - 1 - s_rev
        t = tl.where(d == 0, s, T - 1 - s)
        is_valid = row_mask & (t < length)
        valid = is_valid[:, None]
        gx_rows = seq_offset(t, rows, B, D, d, 4 * H)
        y_rows = seq_offset(t, rows, B, D, d, H)
        prev_rows = seq_offset(t + tl.where(d == 0, -1, 1), rows, B, D, d, H)
        dy = load_state(dy_ptr, y_rows, j, row_mask, jm, HAS_DY)
        dh_t = step_grad(dh, dy, dh_steps_ptr, y_rows, j, row_mask, jm, valid, RECORD)
        i = load_tile(gates_ptr, gx_rows, j, row_mask, jm)
        f = load_tile(gates_ptr, gx_rows, H + j, row_mask, jm)
        g = load_tile(gates_ptr, gx_rows, 2 * H + j, row_mask, jm)
        o = load_tile(gates_ptr, gx_rows, 3 * H + j, row_mask, jm)
        tanh_c = tanh(load_tile(c_steps_ptr, y_rows, j, row_mask, jm))
        c_prev = load_previous(c_steps_ptr, prev_rows, c0_ptr, st, j, jm, is_valid, s == first, HAS_C0)
        dc_t = dc + dh_t * o * (1.0 - tanh_c * tanh_c)  # δc_t, the total
        if RECORD:
            store_tile(dc_steps_ptr, y_rows, j, row_mask, jm, tl.where(valid, dc_t, 0.0))
        da_i = tl.where(valid, dc_t * g * i * (1.0 - i), 0.0)
        da_f = tl.where(valid, dc_t * c_prev * f * (1.0 - f), 0.0)
        da_g = tl.where(valid, dc_t * i * (1.0 - g * g), 0.0)
        da_o = tl.where(valid, dh_t * tanh_c * o * (1.0 - o), 0.0)
        _store_gates(dgx_ptr, gx_rows, j, row_mask, jm, H, da_i, da_f, da_g, da_o)
        da = join4(da_i, da_f, da_g, da_o, BB, BH)  # [BB, 4BH]
        dh = tl.where(valid, tl.dot(da, w, input_precision=PRECISION), dh)
        dc = dc_t * tl.where(valid, f, 1.0)  # at a masked step dc_t = dc: δh_t is 0 there
    store_tile(dh0_ptr, st, j, row_mask, jm, dh)
    store_tile(dc0_ptr, st, j, row_mask, jm, dc)


def lstm_fwd(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    w_hr: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    *,
    training: bool = True,
    precision: str = "ieee",
) -> LSTMForward:
    """The Triton twin of `kernels.reference.lstm_fwd`: same arguments, same return values."""
    T, B, D, G = gx.shape
    H, P = G // 4, w_hh.shape[2]
    check_contiguous("lstm_fwd", gx=gx, w_hh=w_hh, h0=h0, c0=c0, w_hr=w_hr, lengths=lengths)
    cfg = launch_config(B, H, P, 4, gx, precision, D=D)
    if cfg.path == "split":
        out = split_forward(
            "lstm", cfg, gx, w_hh, h0=h0, c0=c0, w_hr=w_hr, lengths=lengths, training=training
        )
        return LSTMForward(*out)
    y = alloc((T, B, D, P), gx)
    h_n, c_n = alloc((D, B, P), gx), alloc((D, B, H), gx)
    gates = alloc((T, B, D, G), gx) if training else None
    c_steps = alloc((T, B, D, H), gx) if training else None
    absent = gx
    if cfg.resident:
        launch(
            wrap_triton(_lstm_fwd_resident_kernel), (triton.cdiv(B, cfg.BB), D),
            gx, w_hh, or_absent(h0, absent), or_absent(c0, absent), or_absent(lengths, absent),
            y, h_n, c_n, or_absent(gates, absent), or_absent(c_steps, absent),
            T, B, H,
            HAS_H0=h0 is not None, HAS_C0=c0 is not None, HAS_LENGTHS=lengths is not None,
            TRAINING=training, PRECISION=cfg.PRECISION, BB=cfg.BB, BH=cfg.BH, num_warps=cfg.num_warps,
        )  # fmt: skip
        return LSTMForward(y, h_n, c_n, gates, c_steps)
    h_buf = alloc((2, D, B, P), gx, torch.float32)
    c_buf = alloc((D, B, H), gx, torch.float32)
    m_buf = alloc((D, B, H), gx, torch.float32) if w_hr is not None else None
    launch(
        wrap_triton(_lstm_fwd_kernel), (triton.cdiv(B, cfg.BB), D),
        gx, w_hh, or_absent(w_hr, absent),
        or_absent(h0, absent), or_absent(c0, absent),
        or_absent(lengths, absent),
        y, h_n, c_n, or_absent(gates, absent), or_absent(c_steps, absent),
        h_buf, c_buf, or_absent(m_buf, absent),
        T, B, H, P,
        HAS_H0=h0 is not None, HAS_C0=c0 is not None, HAS_LENGTHS=lengths is not None,
        PROJ=w_hr is not None, TRAINING=training, PRECISION=cfg.PRECISION,
        BB=cfg.BB, BH=cfg.BH, BK=cfg.BK, num_warps=cfg.num_warps,
    )  # fmt: skip
    return LSTMForward(y, h_n, c_n, gates, c_steps)


def lstm_bwd(
    dy: torch.Tensor | None,
    dh_n: torch.Tensor | None,
    dc_n: torch.Tensor | None,
    w_hh: torch.Tensor,
    w_hr: torch.Tensor | None,
    c0: torch.Tensor | None,
    gates: torch.Tensor,
    c_steps: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    record: bool = False,
    precision: str = "ieee",
) -> LSTMBackward:
    """The Triton twin of `kernels.reference.lstm_bwd`: same arguments, same return values."""
    T, B, D, G = gates.shape
    H, P = G // 4, w_hh.shape[2]
    check_contiguous("lstm_bwd", dy=dy, dh_n=dh_n, dc_n=dc_n, w_hh=w_hh, w_hr=w_hr, c0=c0, gates=gates,
                     c_steps=c_steps, lengths=lengths)  # fmt: skip
    cfg = launch_config(B, H, P, 4, gates, precision, D=D, backward=True)
    if cfg.path == "split":
        dgx, _, dh0, dc0, dh_steps, dc_steps = split_backward(
            "lstm", cfg, dy, dh_n, w_hh, dc_n=dc_n, w_hr=w_hr, c0=c0, gates=gates, aux=c_steps,
            lengths=lengths, record=record,
        )  # fmt: skip
        return LSTMBackward(dgx, dh0, dc0, dh_steps, dc_steps)
    f32 = torch.float32
    dgx = alloc((T, B, D, G), gates)
    dh0, dc0 = alloc((D, B, P), gates), alloc((D, B, H), gates)
    keep_dh = record or w_hr is not None
    dh_steps, dh_step_stride = step_gradients(keep_dh, T, B, D, P, gates)
    dc_steps = alloc((T, B, D, H), gates, f32) if record else None
    absent = gates
    if cfg.resident:
        launch(
            wrap_triton(_lstm_bwd_resident_kernel), (triton.cdiv(B, cfg.BB), D),
            or_absent(dy, absent), or_absent(dh_n, absent), or_absent(dc_n, absent),
            w_hh, or_absent(c0, absent),
            gates, c_steps, or_absent(lengths, absent),
            dgx, dh0, dc0, dh_steps, or_absent(dc_steps, absent),
            T, B, H,
            HAS_DY=dy is not None, HAS_DHN=dh_n is not None, HAS_DCN=dc_n is not None,
            HAS_C0=c0 is not None, HAS_LENGTHS=lengths is not None, RECORD=record,
            PRECISION=cfg.PRECISION, BB=cfg.BB, BH=cfg.BH, num_warps=cfg.num_warps,
        )  # fmt: skip
        return LSTMBackward(dgx, dh0, dc0, dh_steps if keep_dh else None, dc_steps)
    launch(
        wrap_triton(_lstm_bwd_kernel), (triton.cdiv(B, cfg.BB), D),
        or_absent(dy, absent),
        or_absent(dh_n, absent), or_absent(dc_n, absent),
        w_hh, or_absent(w_hr, absent),
        or_absent(c0, absent),
        gates, c_steps, or_absent(lengths, absent),
        dgx, dh0, dc0, dh_steps, or_absent(dc_steps, absent),
        alloc((D, B, P), gates, f32), alloc((D, B, H), gates, f32), alloc((D, B, G), gates, f32),
        T, B, H, P, dh_step_stride,
        HAS_DY=dy is not None, HAS_DHN=dh_n is not None, HAS_DCN=dc_n is not None,
        HAS_C0=c0 is not None, HAS_LENGTHS=lengths is not None, PROJ=w_hr is not None,
        RECORD=record, PRECISION=cfg.PRECISION, BB=cfg.BB, BH=cfg.BH, BK=cfg.BK, num_warps=cfg.num_warps,
    )  # fmt: skip
    return LSTMBackward(dgx, dh0, dc0, dh_steps if keep_dh else None, dc_steps)
