"""Batch-tiled persistent kernels (design A of `shared/KERNEL-DESIGN.md`): one skeleton, every cell.

# T steps, B batch, D directions, H hidden, P recurrent width (H, or LSTM proj_size)
# NG gates (RNN 1, LSTM 4, GRU 3), GP = NG rounded up to a power of two
# BB batch rows per program, BH hidden units per tile, BK reduction tile

Grid (ceil(B / BB), D): one program per batch tile and direction walks the whole sequence, so
programs never wait for each other (they run under `TRITON_INTERPRET=1` as they are). Two paths,
chosen by `_config.launch_config`:

- resident (`_resident_fwd_kernel`, `_resident_bwd_kernel`): one tile of BH >= H units, no
  projection. W_hh is loaded once, gate-interleaved (`weight_rows`), and Triton keeps it in shared
  memory for the whole loop; h (c, and backward the carried δh, δc) stay in fp32 registers. One
  product per step gives every gate of every unit.
- streamed (`_streamed_fwd_kernel`, `_streamed_bwd_kernel`): any H, and the LSTM projection. Per
  step and tile of BH units, each gate's product reads W_hh in [BH, BK] tiles (from L1/L2 once
  touched) and h_{t-1} from an fp32 double buffer in global memory; the cell's state and the
  backward's carried gradients live in fp32 scratch rows that only their program touches, with a
  barrier of the program's threads between the phases of a step.

The cell's gate math is `kernels._cells`' (CELL constexpr), shared with the split kernels of
`kernels/split.py`. Launchers pass every argument by keyword, absent tensors as None (Triton
specializes a None argument away; a kernel touches one only under its flag).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from kernels._cells import (
    CELL_IDS,
    GATES,
    GRU,
    LSTM,
    backward_outputs,
    candidate_bias,
    cell_forward,
    cell_grads,
    cell_saved,
    forward_outputs,
    join_gates,
    load_gates,
    save_step,
    split_gates,
    store_grads,
)
from kernels._config import LaunchConfig, alloc, launch
from kernels._tiles import (
    carry_back,
    copy_rows,
    dot_rows_w,
    dot_rows_wt,
    load_state,
    load_tile,
    program_rows,
    resident_weights,
    seq_offset,
    state_offset,
    step_grad,
    store_tile,
    total_step_grad,
)


@triton.jit
def _streamed_preacts(
    gx_ptr, gx_rows, h_ptr, st_h, row_mask, P, w_ptr, j, jm, H, CELL: tl.constexpr, NG: tl.constexpr,
    PRECISION: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    # each gate's gx_t + h_{t-1} W_hh[gate rows of j]ᵀ, one product per gate over P in [BH, BK] tiles, as
    # `cell_forward`'s (x*, a*): the input side folded into a* (x* = -0.0, which x + (-0.0) = x lets the
    # compiler drop; +0.0 it may not) except for the GRU candidate, whose hidden side r gates
    zero = tl.zeros((BB, BH), dtype=tl.float32)
    folded = tl.full((BB, BH), -0.0, dtype=tl.float32)
    a0 = load_tile(gx_ptr, gx_rows, j, row_mask, jm)
    a0 = dot_rows_wt(a0, h_ptr, st_h, row_mask, P, w_ptr, j, jm, PRECISION, BK)
    a1, a2, a3, x2 = zero, zero, zero, folded
    if NG > 1:
        a1 = load_tile(gx_ptr, gx_rows, H + j, row_mask, jm)
        a1 = dot_rows_wt(a1, h_ptr, st_h, row_mask, P, w_ptr, H + j, jm, PRECISION, BK)
    if CELL == GRU:
        a2 = dot_rows_wt(zero, h_ptr, st_h, row_mask, P, w_ptr, 2 * H + j, jm, PRECISION, BK)
        x2 = load_tile(gx_ptr, gx_rows, 2 * H + j, row_mask, jm)  # after: not live through the product
    elif NG > 2:
        a2 = load_tile(gx_ptr, gx_rows, 2 * H + j, row_mask, jm)
        a2 = dot_rows_wt(a2, h_ptr, st_h, row_mask, P, w_ptr, 2 * H + j, jm, PRECISION, BK)
    if NG > 3:
        a3 = load_tile(gx_ptr, gx_rows, 3 * H + j, row_mask, jm)
        a3 = dot_rows_wt(a3, h_ptr, st_h, row_mask, P, w_ptr, 3 * H + j, jm, PRECISION, BK)
    return folded, folded, x2, folded, a0, a1, a2, a3


@triton.jit(do_not_specialize=["T"])
def _streamed_fwd_kernel(
    gx_ptr,  # [T, B, D, NG*H]
    w_hh_ptr,  # [D, NG*H, P]
    w_hr_ptr,  # [D, P, H] (PROJ)
    b_hn_ptr,  # [D, H] (HAS_BHN, GRU)
    h0_ptr,  # [D, B, P] (HAS_H0)
    c0_ptr,  # [D, B, H] (HAS_C0, LSTM)
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    y_ptr,  # [T, B, D, P]
    hn_ptr,  # [D, B, P]
    cn_ptr,  # [D, B, H] (LSTM)
    gates_ptr,  # [T, B, D, NG*H] activated (TRAINING: LSTM, GRU)
    aux_ptr,  # [T, B, D, H] (TRAINING): LSTM c_t, GRU W_hn h_{t-1} + b_hn
    h_buf_ptr,  # [2, D, B, P] fp32: h_{t-1} and h_t
    c_buf_ptr,  # [D, B, H] fp32 (LSTM)
    m_buf_ptr,  # [D, B, H] fp32: o ⊙ tanh(c_t) before the projection (PROJ)
    T,
    B,
    H,
    P,
    zoneout,  # cell zoneout's probability (LSTM, ZONED: its expectation)
    CELL: tl.constexpr,
    ZONED: tl.constexpr,
    NG: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_C0: tl.constexpr,
    HAS_BHN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    PROJ: tl.constexpr,
    TRAINING: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
):
    d, D, rows, row_mask = program_rows(B, BB)
    if HAS_LENGTHS:  # loaded here, not in a helper: torch.compile then sees len_ptr only read
        length = tl.load(len_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # [BB] valid steps
    else:
        length = tl.zeros((BB,), dtype=tl.int64) + T
    w_hh = w_hh_ptr + d.to(tl.int64) * NG * H * P
    if PROJ:
        w_hr = w_hr_ptr + d.to(tl.int64) * P * H
    st_h = state_offset(rows, B, d, P)
    st_u = state_offset(rows, B, d, H)
    half = D.to(tl.int64) * B * P  # one half of the h double buffer
    copy_rows(h_buf_ptr, h0_ptr, st_h, row_mask, P, HAS_H0, BK)
    if CELL == LSTM:
        copy_rows(c_buf_ptr, c0_ptr, st_u, row_mask, H, HAS_C0, BH)
    tl.debug_barrier()
    for s in range(T):
        t = tl.where(d == 0, s, T - 1 - s)
        valid = (row_mask & (t < length))[:, None]  # [BB, 1]: a masked step keeps the state
        h_cur = h_buf_ptr + (s % 2) * half
        h_nxt = h_buf_ptr + ((s + 1) % 2) * half
        gx_rows = seq_offset(t, rows, B, D, d, NG * H)
        u_rows = seq_offset(t, rows, B, D, d, H)
        y_rows = seq_offset(t, rows, B, D, d, P)
        for j0 in range(0, H, BH):
            j = j0 + tl.arange(0, BH)
            jm = j < H
            x0, x1, x2, x3, a0, a1, a2, a3 = _streamed_preacts(
                gx_ptr, gx_rows, h_cur, st_h, row_mask, P, w_hh, j, jm, H, CELL, NG, PRECISION, BB, BH, BK
            )
            # the units' state entering the step: the GRU's h_{t-1} (its update reads it), LSTM's c_{t-1}
            h_prev = tl.zeros((BB, BH), dtype=tl.float32)
            if CELL == GRU:
                h_prev = load_tile(h_cur, st_h, j, row_mask, jm)
            c_prev = h_prev
            if CELL == LSTM:
                c_prev = load_tile(c_buf_ptr, st_u, j, row_mask, jm)
            b_hn = candidate_bias(b_hn_ptr, d, H, j, jm, HAS_BHN, BB, BH)
            h, c, s0, s1, s2, s3, aux = cell_forward(
                CELL, x0, x1, x2, x3, a0, a1, a2, a3, h_prev, c_prev, b_hn, zoneout, ZONED
            )
            if CELL == LSTM:
                store_tile(c_buf_ptr, st_u, j, row_mask, jm, tl.where(valid, c, c_prev))
            if TRAINING:
                save_step(
                    CELL, gates_ptr, aux_ptr, gx_rows, u_rows, j, jm, row_mask, valid, H, s0, s1, s2, s3, aux
                )
            if PROJ:  # h lives in P columns, written by the projection below
                store_tile(m_buf_ptr, st_u, j, row_mask, jm, h)
            else:
                if CELL != GRU:  # loaded only now, for the masked rows: not live through the math
                    h_prev = load_tile(h_cur, st_h, j, row_mask, jm)
                store_tile(h_nxt, st_h, j, row_mask, jm, tl.where(valid, h, h_prev))
                store_tile(y_ptr, y_rows, j, row_mask, jm, tl.where(valid, h, 0.0))
        if PROJ:
            tl.debug_barrier()  # every unit's m_t is written before the projection reads it
            for p0 in range(0, P, BH):
                p = p0 + tl.arange(0, BH)
                pm = p < P
                zero = tl.zeros((BB, BH), dtype=tl.float32)
                h = dot_rows_wt(zero, m_buf_ptr, st_u, row_mask, H, w_hr, p, pm, PRECISION, BK)
                h_prev = load_tile(h_cur, st_h, p, row_mask, pm)
                store_tile(h_nxt, st_h, p, row_mask, pm, tl.where(valid, h, h_prev))
                store_tile(y_ptr, y_rows, p, row_mask, pm, tl.where(valid, h, 0.0))
        tl.debug_barrier()  # h_t complete before step t+1 reads it
    copy_rows(hn_ptr, h_buf_ptr + (T % 2) * half, st_h, row_mask, P, True, BK)
    if CELL == LSTM:
        copy_rows(cn_ptr, c_buf_ptr, st_u, row_mask, H, True, BH)


@triton.jit(do_not_specialize=["T"])
def _resident_fwd_kernel(
    gx_ptr,  # [T, B, D, NG*H]
    w_hh_ptr,  # [D, NG*H, H]
    b_hn_ptr,  # [D, H] (HAS_BHN, GRU)
    h0_ptr,  # [D, B, H] (HAS_H0)
    c0_ptr,  # [D, B, H] (HAS_C0, LSTM)
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    y_ptr,  # [T, B, D, H]
    hn_ptr,  # [D, B, H]
    cn_ptr,  # [D, B, H] (LSTM)
    gates_ptr,  # [T, B, D, NG*H] activated (TRAINING: LSTM, GRU)
    aux_ptr,  # [T, B, D, H] (TRAINING): LSTM c_t, GRU W_hn h_{t-1} + b_hn
    T,
    B,
    H,
    zoneout,  # cell zoneout's probability (LSTM, ZONED: its expectation)
    CELL: tl.constexpr,
    ZONED: tl.constexpr,
    NG: tl.constexpr,
    GP: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_C0: tl.constexpr,
    HAS_BHN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    TRAINING: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
):
    # W_hh on chip for the whole loop, h and c in registers: one tile of BH >= H units, no projection
    d, D, rows, row_mask = program_rows(B, BB)
    if HAS_LENGTHS:  # loaded here, not in a helper: torch.compile then sees len_ptr only read
        length = tl.load(len_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # [BB] valid steps
    else:
        length = tl.zeros((BB,), dtype=tl.int64) + T
    w_t = tl.trans(resident_weights(w_hh_ptr + d.to(tl.int64) * NG * H * H, H, NG, GP, BH))  # [BH, GP*BH]
    j = tl.arange(0, BH)
    jm = j < H
    st = state_offset(rows, B, d, H)
    h = load_state(h0_ptr, st, j, row_mask, jm, HAS_H0)  # [BB, BH] fp32
    c = load_state(c0_ptr, st, j, row_mask, jm, HAS_C0)
    b_hn = candidate_bias(b_hn_ptr, d, H, j, jm, HAS_BHN, BB, BH)
    for s in range(T):
        t = tl.where(d == 0, s, T - 1 - s)
        valid = (row_mask & (t < length))[:, None]
        gx_rows = seq_offset(t, rows, B, D, d, NG * H)
        y_rows = seq_offset(t, rows, B, D, d, H)
        a0, a1, a2, a3 = split_gates(tl.dot(h, w_t, input_precision=PRECISION), GP, BB, BH)
        # gx_t after the product: loaded before it, the four tiles live through it (LSTM fp32 at B 8, H 32
        # then spilled on sm_90)
        x0, x1, x2, x3 = load_gates(gx_ptr, gx_rows, j, jm, row_mask, H, NG)
        h_t, c_t, s0, s1, s2, s3, aux = cell_forward(
            CELL, x0, x1, x2, x3, a0, a1, a2, a3, h, c, b_hn, zoneout, ZONED
        )
        store_tile(y_ptr, y_rows, j, row_mask, jm, tl.where(valid, h_t, 0.0))
        if TRAINING:
            save_step(
                CELL, gates_ptr, aux_ptr, gx_rows, y_rows, j, jm, row_mask, valid, H, s0, s1, s2, s3, aux
            )
        if CELL == LSTM:
            c = tl.where(valid, c_t, c)
        h = tl.where(valid, h_t, h)
    store_tile(hn_ptr, st, j, row_mask, jm, h)
    if CELL == LSTM:
        store_tile(cn_ptr, st, j, row_mask, jm, c)


@triton.jit(do_not_specialize=["T"])
def _streamed_bwd_kernel(
    dy_ptr,  # [T, B, D, P] (HAS_DY)
    dhn_ptr,  # [D, B, P] (HAS_DHN)
    dcn_ptr,  # [D, B, H] (HAS_DCN, LSTM)
    w_hh_ptr,  # [D, NG*H, P]
    w_hr_ptr,  # [D, P, H] (PROJ)
    h0_ptr,  # [D, B, H] (HAS_H0, GRU)
    c0_ptr,  # [D, B, H] (HAS_C0, LSTM)
    y_ptr,  # [T, B, D, P] (RNN, GRU)
    gates_ptr,  # [T, B, D, NG*H] activated (LSTM, GRU)
    aux_ptr,  # [T, B, D, H]: LSTM c_t, GRU W_hn h_{t-1} + b_hn
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    dgx_ptr,  # [T, B, D, NG*H]
    dghn_ptr,  # [T, B, D, H] (GRU)
    dh0_ptr,  # [D, B, P]
    dc0_ptr,  # [D, B, H] (LSTM)
    dh_steps_ptr,  # [T, B, D, P] fp32 δh_t; with dh_step_stride = 0 a one-step scratch
    dc_steps_ptr,  # [T, B, D, H] fp32 δc_t (RECORD, LSTM)
    dh_buf_ptr,  # [D, B, P] fp32: the gradient carried back to h_{t-1}
    dc_buf_ptr,  # [D, B, H] fp32: the gradient carried back to c_{t-1} (LSTM)
    dg_buf_ptr,  # [D, B, NG*H] fp32: this step's gate gradients, for the recurrent product
    direct_buf_ptr,  # [D, B, H] fp32: δh_t ⊙ z, what h_{t-1} gets through the update gate (GRU)
    T,
    B,
    H,
    P,
    dh_step_stride,
    zoneout,  # cell zoneout's probability (LSTM, ZONED: its expectation)
    CELL: tl.constexpr,
    ZONED: tl.constexpr,
    NG: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_DCN: tl.constexpr,
    HAS_H0: tl.constexpr,
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
    if HAS_LENGTHS:  # loaded here, not in a helper: torch.compile then sees len_ptr only read
        length = tl.load(len_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # [BB] valid steps
    else:
        length = tl.zeros((BB,), dtype=tl.int64) + T
    first = tl.where(d == 0, 0, T - length)  # [BB] the loop step where each sequence starts
    w_hh = w_hh_ptr + d.to(tl.int64) * NG * H * P
    if PROJ:
        w_hr = w_hr_ptr + d.to(tl.int64) * P * H
    st_h = state_offset(rows, B, d, P)
    st_u = state_offset(rows, B, d, H)
    st_g = state_offset(rows, B, d, NG * H)
    copy_rows(dh_buf_ptr, dhn_ptr, st_h, row_mask, P, HAS_DHN, BK)
    if CELL == LSTM:
        copy_rows(dc_buf_ptr, dcn_ptr, st_u, row_mask, H, HAS_DCN, BH)
    tl.debug_barrier()
    for s_rev in range(T):
        s = T - 1 - s_rev
        t = tl.where(d == 0, s, T - 1 - s)
        is_valid = row_mask & (t < length)
        valid = is_valid[:, None]
        is_first = s == first
        gx_rows = seq_offset(t, rows, B, D, d, NG * H)
        u_rows = seq_offset(t, rows, B, D, d, H)
        prev_rows = seq_offset(t + tl.where(d == 0, -1, 1), rows, B, D, d, H)  # the step processed before t
        y_rows = seq_offset(t, rows, B, D, d, P)
        dh_rows = t.to(tl.int64) * dh_step_stride + (rows * D + d) * P
        total_step_grad(
            dh_buf_ptr, dy_ptr, dh_steps_ptr, st_h, y_rows, dh_rows, row_mask, valid, P, HAS_DY, BK
        )
        tl.debug_barrier()
        for j0 in range(0, H, BH):
            j = j0 + tl.arange(0, BH)
            jm = j < H
            s0, s1, s2, s3, aux, prev = cell_saved(
                CELL, gates_ptr, aux_ptr, y_ptr, h0_ptr, c0_ptr, gx_rows, u_rows, prev_rows, st_u, j, jm,
                row_mask, is_valid, is_first, H, HAS_H0, HAS_C0,
            )  # fmt: skip
            if PROJ:  # δm = δh W_hr
                zero = tl.zeros((BB, BH), dtype=tl.float32)
                dm = dot_rows_w(zero, dh_steps_ptr, dh_rows, row_mask, P, w_hr, H, j, jm, PRECISION, BK)
            else:
                dm = load_tile(dh_steps_ptr, dh_rows, j, row_mask, jm)
            dc_carried = tl.zeros((BB, BH), dtype=tl.float32)
            if CELL == LSTM:
                dc_carried = load_tile(dc_buf_ptr, st_u, j, row_mask, jm)
            g0, g1, g2, g3, p2, direct, dc, dc_prev = cell_grads(
                CELL, dm, s0, s1, s2, s3, aux, prev, dc_carried, valid, zoneout, ZONED
            )
            if CELL == LSTM:
                if RECORD:
                    store_tile(dc_steps_ptr, u_rows, j, row_mask, jm, tl.where(valid, dc, 0.0))
                tl.debug_barrier()  # every thread has read the carried δc before any overwrites it
                store_tile(dc_buf_ptr, st_u, j, row_mask, jm, dc_prev)
            store_grads(
                CELL,
                dgx_ptr,
                dg_buf_ptr,
                dghn_ptr,
                gx_rows,
                u_rows,
                st_g,
                j,
                jm,
                row_mask,
                H,
                g0,
                g1,
                g2,
                g3,
                p2,
                True,
            )
            if CELL == GRU:
                store_tile(direct_buf_ptr, st_u, j, row_mask, jm, direct)
        tl.debug_barrier()
        carry_back(
            dh_buf_ptr, dg_buf_ptr, w_hh, direct_buf_ptr, st_h, st_g, row_mask, valid, NG * H, P, CELL == GRU,
            PRECISION, BB, BH, BK,
        )  # fmt: skip
        tl.debug_barrier()
    copy_rows(dh0_ptr, dh_buf_ptr, st_h, row_mask, P, True, BK)
    if CELL == LSTM:
        copy_rows(dc0_ptr, dc_buf_ptr, st_u, row_mask, H, True, BH)


@triton.jit(do_not_specialize=["T"])
def _resident_bwd_kernel(
    dy_ptr,  # [T, B, D, H] (HAS_DY)
    dhn_ptr,  # [D, B, H] (HAS_DHN)
    dcn_ptr,  # [D, B, H] (HAS_DCN, LSTM)
    w_hh_ptr,  # [D, NG*H, H]
    h0_ptr,  # [D, B, H] (HAS_H0, GRU)
    c0_ptr,  # [D, B, H] (HAS_C0, LSTM)
    y_ptr,  # [T, B, D, H] (RNN, GRU)
    gates_ptr,  # [T, B, D, NG*H] activated (LSTM, GRU)
    aux_ptr,  # [T, B, D, H]: LSTM c_t, GRU W_hn h_{t-1} + b_hn
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    dgx_ptr,  # [T, B, D, NG*H]
    dghn_ptr,  # [T, B, D, H] (GRU)
    dh0_ptr,  # [D, B, H]
    dc0_ptr,  # [D, B, H] (LSTM)
    dh_steps_ptr,  # [T, B, D, H] fp32 δh_t (RECORD)
    dc_steps_ptr,  # [T, B, D, H] fp32 δc_t (RECORD, LSTM)
    T,
    B,
    H,
    zoneout,  # cell zoneout's probability (LSTM, ZONED: its expectation)
    CELL: tl.constexpr,
    ZONED: tl.constexpr,
    NG: tl.constexpr,
    GP: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_DCN: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_C0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    RECORD: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
):
    # W_hh on chip, the carried δh (and δc) in registers: one tile of BH >= H units, no projection
    d, D, rows, row_mask = program_rows(B, BB)
    if HAS_LENGTHS:  # loaded here, not in a helper: torch.compile then sees len_ptr only read
        length = tl.load(len_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # [BB] valid steps
    else:
        length = tl.zeros((BB,), dtype=tl.int64) + T
    first = tl.where(d == 0, 0, T - length)  # [BB] the loop step where each sequence starts
    w = resident_weights(w_hh_ptr + d.to(tl.int64) * NG * H * H, H, NG, GP, BH)  # [GP*BH, BH]
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
        gx_rows = seq_offset(t, rows, B, D, d, NG * H)
        y_rows = seq_offset(t, rows, B, D, d, H)
        prev_rows = seq_offset(t + tl.where(d == 0, -1, 1), rows, B, D, d, H)
        s0, s1, s2, s3, aux, prev = cell_saved(
            CELL, gates_ptr, aux_ptr, y_ptr, h0_ptr, c0_ptr, gx_rows, y_rows, prev_rows, st, j, jm, row_mask,
            is_valid, s == first, H, HAS_H0, HAS_C0,
        )  # fmt: skip
        dy = load_state(dy_ptr, y_rows, j, row_mask, jm, HAS_DY)
        dh_t = step_grad(dh, dy, dh_steps_ptr, y_rows, j, row_mask, jm, valid, RECORD)
        g0, g1, g2, g3, p2, direct, dc_t, dc = cell_grads(
            CELL, dh_t, s0, s1, s2, s3, aux, prev, dc, valid, zoneout, ZONED
        )
        if CELL == LSTM and RECORD:
            store_tile(dc_steps_ptr, y_rows, j, row_mask, jm, tl.where(valid, dc_t, 0.0))
        store_grads(
            CELL, dgx_ptr, None, dghn_ptr, gx_rows, y_rows, st, j, jm, row_mask, H, g0, g1, g2, g3, p2, False
        )
        carried = tl.dot(join_gates(g0, g1, p2, g3, GP, BB, BH), w, input_precision=PRECISION)
        if CELL == GRU:
            carried += direct
        dh = tl.where(valid, carried, dh)
    store_tile(dh0_ptr, st, j, row_mask, jm, dh)
    if CELL == LSTM:
        store_tile(dc0_ptr, st, j, row_mask, jm, dc)


def tiled_forward(
    cell: str,
    cfg: LaunchConfig,
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    *,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    w_hr: torch.Tensor | None = None,
    b_hn: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    training: bool = True,
    zoneout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One layer's forward on a design-A kernel (``cfg.path`` "resident" or "streamed"; ``cell``:
    rnn_tanh, rnn_relu, lstm, gru); the launchers of `kernels.rnn`, `lstm` and `gru` call it where
    `_config.launch_config` chose one of these paths. Returns what `kernels.split.split_forward` does:
    y [T, B, D, P], h_n [D, B, P], c_n [D, B, H] (LSTM), gates [T, B, D, NG*H] and the second saved
    tensor [T, B, D, H] (LSTM c_t, GRU W_hn h_{t-1} + b_hn) when training and the cell keeps them;
    None where not."""
    T, B, D, GH = gx.shape
    CELL, NG = CELL_IDS[cell], GATES[cell]
    H, P = GH // NG, w_hh.shape[2]
    lstm = cell == "lstm"
    y, h_n, c_n, gates, aux = forward_outputs(cell, gx, P, training)
    grid = (triton.cdiv(B, cfg.BB), D)
    flags = dict(
        CELL=CELL, NG=NG, HAS_H0=h0 is not None, HAS_C0=c0 is not None, HAS_BHN=b_hn is not None,
        HAS_LENGTHS=lengths is not None, TRAINING=gates is not None, PRECISION=cfg.PRECISION,
        BB=cfg.BB, BH=cfg.BH, num_warps=cfg.num_warps, zoneout=float(zoneout), ZONED=zoneout > 0,
    )  # fmt: skip
    if cfg.resident:
        launch(
            wrap_triton(_resident_fwd_kernel), grid,
            gx_ptr=gx, w_hh_ptr=w_hh, b_hn_ptr=b_hn, h0_ptr=h0, c0_ptr=c0, len_ptr=lengths,
            y_ptr=y, hn_ptr=h_n, cn_ptr=c_n, gates_ptr=gates, aux_ptr=aux,
            T=T, B=B, H=H, GP=triton.next_power_of_2(NG), **flags,
        )  # fmt: skip
        return y, h_n, c_n, gates, aux
    f32 = torch.float32
    launch(
        wrap_triton(_streamed_fwd_kernel), grid,
        gx_ptr=gx, w_hh_ptr=w_hh, w_hr_ptr=w_hr, b_hn_ptr=b_hn, h0_ptr=h0, c0_ptr=c0, len_ptr=lengths,
        y_ptr=y, hn_ptr=h_n, cn_ptr=c_n, gates_ptr=gates, aux_ptr=aux,
        h_buf_ptr=alloc((2, D, B, P), gx, f32),
        c_buf_ptr=alloc((D, B, H), gx, f32) if lstm else None,
        m_buf_ptr=alloc((D, B, H), gx, f32) if w_hr is not None else None,
        T=T, B=B, H=H, P=P, PROJ=w_hr is not None, BK=cfg.BK, **flags,
    )  # fmt: skip
    return y, h_n, c_n, gates, aux


def tiled_backward(
    cell: str,
    cfg: LaunchConfig,
    dy: torch.Tensor | None,
    dh_n: torch.Tensor | None,
    w_hh: torch.Tensor,
    *,
    y: torch.Tensor | None = None,
    dc_n: torch.Tensor | None = None,
    w_hr: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    gates: torch.Tensor | None = None,
    aux: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    record: bool = False,
    zoneout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor | None,
           torch.Tensor | None]:  # fmt: skip
    """One layer's backward on a design-A kernel, from what `tiled_forward` saved: ``y`` (RNN, GRU),
    ``gates`` and ``aux`` (LSTM, GRU). Returns what `kernels.split.split_backward` does: dgx
    [T, B, D, NG*H], dghn [T, B, D, H] (GRU), dh0 [D, B, P], dc0 [D, B, H] (LSTM), the fp32 δh_t
    [T, B, D, P] (with ``record`` or a projection) and δc_t [T, B, D, H] (LSTM, ``record``); None
    where not."""
    like = y if y is not None else gates
    T, B, D = like.shape[:3]
    CELL, NG = CELL_IDS[cell], GATES[cell]
    H, P = w_hh.shape[1] // NG, w_hh.shape[2]
    lstm, gru = cell == "lstm", cell == "gru"
    f32 = torch.float32
    keep_dh = record or w_hr is not None
    dgx, dghn, dh0, dc0, dh_steps, dc_steps = backward_outputs(
        cell, like, H, P, record=record, keep_dh=keep_dh
    )
    # without a record the streamed kernel still passes δh_t through memory: a one-step scratch
    dh_step_stride = B * D * P if keep_dh else 0
    if dh_steps is None and not cfg.resident:
        dh_steps = alloc((1, B, D, P), like, f32)
    grid = (triton.cdiv(B, cfg.BB), D)
    tensors = dict(
        dy_ptr=dy, dhn_ptr=dh_n, dcn_ptr=dc_n, w_hh_ptr=w_hh, h0_ptr=h0, c0_ptr=c0, y_ptr=y, gates_ptr=gates,
        aux_ptr=aux, len_ptr=lengths, dgx_ptr=dgx, dghn_ptr=dghn, dh0_ptr=dh0, dc0_ptr=dc0,
        dh_steps_ptr=dh_steps, dc_steps_ptr=dc_steps,
    )  # fmt: skip
    flags = dict(
        CELL=CELL, NG=NG, HAS_DY=dy is not None, HAS_DHN=dh_n is not None, HAS_DCN=dc_n is not None,
        HAS_H0=h0 is not None, HAS_C0=c0 is not None, HAS_LENGTHS=lengths is not None, RECORD=record,
        PRECISION=cfg.PRECISION, BB=cfg.BB, BH=cfg.BH, num_warps=cfg.num_warps, zoneout=float(zoneout),
        ZONED=zoneout > 0,
    )  # fmt: skip
    if cfg.resident:
        launch(
            wrap_triton(_resident_bwd_kernel),
            grid,
            **tensors,
            T=T,
            B=B,
            H=H,
            GP=triton.next_power_of_2(NG),
            **flags,
        )
    else:
        launch(
            wrap_triton(_streamed_bwd_kernel), grid, **tensors,
            w_hr_ptr=w_hr,
            dh_buf_ptr=alloc((D, B, P), like, f32),
            dc_buf_ptr=alloc((D, B, H), like, f32) if lstm else None,
            dg_buf_ptr=alloc((D, B, NG * H), like, f32),
            direct_buf_ptr=alloc((D, B, H), like, f32) if gru else None,
            T=T, B=B, H=H, P=P, dh_step_stride=dh_step_stride, PROJ=w_hr is not None, BK=cfg.BK, **flags,
        )  # fmt: skip
    return dgx, dghn, dh0, dc0, dh_steps if keep_dh else None, dc_steps
