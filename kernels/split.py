"""Hidden-split persistent kernels (design B of `shared/KERNEL-DESIGN.md`): one skeleton, every cell.

# T steps, B batch, D directions, H hidden, P recurrent width (H, or LSTM proj_size)
# NG gates (RNN 1, LSTM 4, GRU 3), GP = NG rounded up to a power of two
# BB batch rows, BH hidden units, BC columns of h per program (BH; with a projection BP), BCP = BC padded
# to 16 (tl.dot's least width), PP / HP = P / H padded to a power of two, BK reduction chunk

Grid (NJ, NBT, D): program (k, bt, d) owns hidden units [k·BH, (k+1)·BH) (every gate of them, so the
cell update stays local) and columns [k·BC, (k+1)·BC) of h, for batch rows [bt·BB, (bt+1)·BB) of
direction d. Every program runs the whole sequence; after each phase it meets the other programs of
its batch tile and direction (the NJ that share h_t) at a barrier, so that what one phase writes
(h_t, m_t, the gate gradients) is complete before the next phase reads all of it; other groups never
wait for each other. All programs must be resident at once: `_config` sizes the grid to at most one
program per SM.

Forward, phase 0 writes the initial state, then per step (phases 1 + NPH·s ...):
- units phase: h_{t-1} [BB, P] (all of it, from L2: `.cg` loads) @ the program's rows of W_hhᵀ, which
  are loaded once before the loop and stay in shared memory; the cell's gate math in fp32; the
  program's slice of h_t (or, with a projection, of m_t = o ⊙ tanh c_t).
- projection phase (LSTM proj_size): m_t [BB, H] (all of it) @ the program's rows of W_hrᵀ.
Backward, phase 0 writes the final-state gradients, then per step in reverse: the carried gradient
of the program's columns from the step before, += [gate gradients of every unit] @ W_hh[:, columns]
(W_hh read in [BK, BCP] chunks), then its units' gate gradients from δh_t (its own columns; + δh_t ⊙ z
carried directly for the GRU) and the saved activations. With a projection a columns phase comes
first: the product and δh_t = dy_t + carried for the program's columns of h, then the units phase
reads all of δh_t for δm = δh_t W_hr. In each units phase the loads that do not depend on h_{t-1}
(forward: gx_t, c_{t-1}) or on δh_t (backward: the saved activations, dy_t) come first, so that they
are in flight with the dependent ones instead of after them.

State between phases lives in global fp32 buffers that only its owner writes (c, the carried
gradient) or that every program reads after the barrier (h_t, m_t, the gate gradients), so a launch
can stop after any phase: under `TRITON_INTERPRET=1`, where the programs of a grid run one after
another and a barrier would wait forever, the launchers run one phase per launch (``SYNC=False``),
which tests every line but the barrier in CI. On a GPU one launch runs every phase.

Products take their operands in the storage dtype (bf16/fp16 on tensor cores; fp32 as TF32 or IEEE,
``PRECISION``) and accumulate in fp32; the interpreter multiplies in fp32 (``UPCAST``: its bf16
`tl.dot` is wrong).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from kernels._cells import (
    CELL_IDS,
    GATES,
    LSTM,
    backward_outputs,
    candidate_bias,
    cell_forward,
    cell_grads,
    cell_saved,
    forward_outputs,
    load_gates,
    save_step,
    split_gates,
    store_grads,
)
from kernels._config import LaunchConfig, alloc, interpreted, launch
from kernels._tiles import (
    grid_barrier,
    load_state,
    load_tile,
    seq_offset,
    step_grad,
    store_tile,
    weight_rows,
)


@triton.jit
def _load_all(ptr, row_off, N, row_mask, NP: tl.constexpr):
    # [BB, NP] fp32: every column of rows another program may have written this launch (through L2)
    cols = tl.arange(0, NP)
    mask = row_mask[:, None] & (cols < N)[None, :]
    return tl.load(ptr + row_off[:, None] + cols[None, :], mask=mask, other=0.0, cache_modifier=".cg").to(
        tl.float32
    )


@triton.jit
def _carry_product(
    da_ptr, w_hh, carry_ptr, st_p, st_g, cols, cm, row_mask, NGH, P, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, BB: tl.constexpr, BCP: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    # the program's columns of the carried gradient += [gate gradients of every unit] @ W_hh[:, columns],
    # W_hh and the gate gradients read in chunks of BK rows (the K-loop's loads are pipelined)
    carried = load_tile(carry_ptr, st_p, cols, row_mask, cm)
    acc = tl.zeros((BB, BCP), dtype=tl.float32)
    for k0 in range(0, NGH, BK):
        kk = k0 + tl.arange(0, BK)
        km = kk < NGH
        a = tl.load(
            da_ptr + st_g[:, None] + kk[None, :], mask=row_mask[:, None] & km[None, :], other=0.0,
            cache_modifier=".cg",
        )  # fmt: skip
        w_mask = km[:, None] & cm[None, :]
        w = tl.load(w_hh + kk[:, None].to(tl.int64) * P + cols[None, :], mask=w_mask, other=0.0)
        if UPCAST:
            w = w.to(tl.float32)
        acc += tl.dot(a.to(w.dtype), w, input_precision=PRECISION)
    tl.debug_barrier()  # every thread has read `carried` before any overwrites it
    store_tile(carry_ptr, st_p, cols, row_mask, cm, carried + acc)
    tl.debug_barrier()  # read back by other threads


@triton.jit
def _program(B, H, P, BB: tl.constexpr, BH: tl.constexpr, BC: tl.constexpr, BCP: tl.constexpr):
    # this program's direction d (of D), its barrier group (the programs of its batch tile and
    # direction) and that group's size, its batch rows (int64), its units j [k·BH, (k+1)·BH) and its
    # columns of h [k·BC, (k+1)·BC) (j without a projection), padded to BCP >= 16 for tl.dot; each
    # with its mask
    k, d = tl.program_id(0), tl.program_id(2)
    D = tl.num_programs(2)
    rows = (tl.program_id(1) * BB + tl.arange(0, BB)).to(tl.int64)
    j = k * BH + tl.arange(0, BH)
    lane = tl.arange(0, BCP)
    cols = k * BC + lane
    group = tl.program_id(1) * D + d
    return d, D, group, tl.num_programs(0), rows, rows < B, j, j < H, cols, (lane < BC) & (cols < P)


@triton.jit
def _rows_of(length, t, row_mask):
    # [BB, 1]: the rows whose sequence has step t; a masked step keeps the state
    return (row_mask & (t < length))[:, None]


@triton.jit(do_not_specialize=["T", "i_begin", "i_end"])
def _split_fwd_kernel(
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
    gates_ptr,  # [T, B, D, NG*H] activated (TRAINING, LSTM and GRU)
    aux_ptr,  # [T, B, D, H] (TRAINING): LSTM c_t, GRU W_hn h_{t-1} + b_hn
    h_buf_ptr,  # [2, D, B, P] fp32: h_{t-1} and h_t
    c_buf_ptr,  # [D, B, H] fp32 (LSTM)
    m_buf_ptr,  # [D, B, H] fp32: o ⊙ tanh(c_t) (PROJ)
    counter_ptr,  # [NBT*D] int32, zero: the barrier of each batch tile and direction (SYNC)
    T,
    B,
    H,
    P,
    i_begin,  # the phases this launch runs: [i_begin, i_end) of 1 + NPH·T
    i_end,
    zoneout,  # cell zoneout's probability (LSTM, ZONED: its expectation)
    CELL: tl.constexpr,
    ZONED: tl.constexpr,
    NG: tl.constexpr,
    GP: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_C0: tl.constexpr,
    HAS_BHN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    PROJ: tl.constexpr,
    TRAINING: tl.constexpr,
    SYNC: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BC: tl.constexpr,
    BCP: tl.constexpr,
    PP: tl.constexpr,
    HP: tl.constexpr,
):
    NPH: tl.constexpr = 2 if PROJ else 1
    d, D, group, programs, rows, row_mask, j, jm, cols, cm = _program(B, H, P, BB, BH, BC, BCP)
    k = tl.program_id(0)
    if HAS_LENGTHS:  # loaded here, not in a helper: torch.compile then sees len_ptr only read
        length = tl.load(len_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # [BB] valid steps
    else:
        length = tl.zeros((BB,), dtype=tl.int64) + T
    st_p = (d.to(tl.int64) * B + rows) * P
    st_u = (d.to(tl.int64) * B + rows) * H
    half = D.to(tl.int64) * B * P  # one half of the h double buffer
    # the program's rows of W_hh, gate-interleaved, loaded once: Triton keeps them in shared memory
    w_t = tl.trans(weight_rows(w_hh_ptr + d.to(tl.int64) * NG * H * P, k * BH, H, P, NG, GP, BH, PP))
    if UPCAST:
        w_t = w_t.to(tl.float32)  # [PP, GP*BH]
    if PROJ:
        w_hr_t = tl.trans(weight_rows(w_hr_ptr + d.to(tl.int64) * P * H, k * BC, P, H, 1, 1, BCP, HP))
        if UPCAST:
            w_hr_t = w_hr_t.to(tl.float32)  # [HP, BCP]
    b_hn = candidate_bias(b_hn_ptr, d, H, j, jm, HAS_BHN, BB, BH)
    for i in range(i_begin, i_end):
        if i == 0:  # the initial state of the program's slices
            h0 = load_state(h0_ptr, st_p, cols, row_mask, cm, HAS_H0)
            store_tile(h_buf_ptr, st_p, cols, row_mask, cm, h0)
            if CELL == LSTM:
                store_tile(
                    c_buf_ptr, st_u, j, row_mask, jm, load_state(c0_ptr, st_u, j, row_mask, jm, HAS_C0)
                )
        else:
            s = (i - 1) // NPH
            t = tl.where(d == 0, s, T - 1 - s)
            valid = _rows_of(length, t, row_mask)
            h_cur = h_buf_ptr + (s % 2) * half
            h_nxt = h_buf_ptr + ((s + 1) % 2) * half
            y_rows = seq_offset(t, rows, B, D, d, P)
            if (i - 1) % NPH == 0:  # the units phase
                gx_rows = seq_offset(t, rows, B, D, d, NG * H)
                u_rows = seq_offset(t, rows, B, D, d, H)
                # first the loads that do not wait for h_{t-1}, so that they overlap its load: issued
                # after the product they would wait behind its bar.syncs, a second round trip per step
                x0, x1, x2, x3 = load_gates(gx_ptr, gx_rows, j, jm, row_mask, H, NG)
                if PROJ:
                    h_prev = tl.zeros((BB, BH), dtype=tl.float32)  # h lives in P columns: not the units'
                else:
                    h_prev = load_tile(h_cur, st_p, j, row_mask, jm)  # the program's units of h_{t-1}
                c_prev = h_prev
                if CELL == LSTM:
                    c_prev = load_tile(c_buf_ptr, st_u, j, row_mask, jm)
                h_all = _load_all(h_cur, st_p, P, row_mask, PP)  # [BB, PP] h_{t-1}
                acc = tl.dot(h_all.to(w_t.dtype), w_t, input_precision=PRECISION)  # [BB, GP*BH]
                a0, a1, a2, a3 = split_gates(acc, GP, BB, BH)
                h_new, c, s0, s1, s2, s3, aux = cell_forward(
                    CELL, x0, x1, x2, x3, a0, a1, a2, a3, h_prev, c_prev, b_hn, zoneout, ZONED
                )
                if CELL == LSTM:
                    tl.debug_barrier()  # every thread has read c_{t-1} before any overwrites it
                    store_tile(c_buf_ptr, st_u, j, row_mask, jm, tl.where(valid, c, c_prev))
                if TRAINING:
                    save_step(
                        CELL,
                        gates_ptr,
                        aux_ptr,
                        gx_rows,
                        u_rows,
                        j,
                        jm,
                        row_mask,
                        valid,
                        H,
                        s0,
                        s1,
                        s2,
                        s3,
                        aux,
                    )
                if PROJ:
                    store_tile(m_buf_ptr, st_u, j, row_mask, jm, h_new)
                else:
                    store_tile(h_nxt, st_p, j, row_mask, jm, tl.where(valid, h_new, h_prev))
                    store_tile(y_ptr, y_rows, j, row_mask, jm, tl.where(valid, h_new, 0.0))
            if PROJ:
                if (i - 1) % NPH == 1:  # the projection phase: h_t = W_hr m_t
                    m_all = _load_all(m_buf_ptr, st_u, H, row_mask, HP)  # [BB, HP]
                    h_new = tl.dot(m_all.to(w_hr_t.dtype), w_hr_t, input_precision=PRECISION)  # [BB, BCP]
                    h_prev = load_tile(h_cur, st_p, cols, row_mask, cm)
                    store_tile(h_nxt, st_p, cols, row_mask, cm, tl.where(valid, h_new, h_prev))
                    store_tile(y_ptr, y_rows, cols, row_mask, cm, tl.where(valid, h_new, 0.0))
        if SYNC:
            grid_barrier(counter_ptr + group, (i + 1 - i_begin) * programs)
        else:
            tl.debug_barrier()
    if i_end == 1 + NPH * T:  # the final state of the program's slices
        h_n = load_tile(h_buf_ptr + (T % 2) * half, st_p, cols, row_mask, cm)
        store_tile(hn_ptr, st_p, cols, row_mask, cm, h_n)
        if CELL == LSTM:
            store_tile(cn_ptr, st_u, j, row_mask, jm, load_tile(c_buf_ptr, st_u, j, row_mask, jm))


@triton.jit(do_not_specialize=["T", "i_begin", "i_end"])
def _split_bwd_kernel(
    dy_ptr,  # [T, B, D, P] (HAS_DY)
    dhn_ptr,  # [D, B, P] (HAS_DHN)
    dcn_ptr,  # [D, B, H] (HAS_DCN, LSTM)
    w_hh_ptr,  # [D, NG*H, P]
    w_hr_ptr,  # [D, P, H] (PROJ)
    h0_ptr,  # [D, B, H] (HAS_H0, GRU)
    c0_ptr,  # [D, B, H] (HAS_C0, LSTM)
    y_ptr,  # [T, B, D, P]
    gates_ptr,  # [T, B, D, NG*H] activated (LSTM, GRU)
    aux_ptr,  # [T, B, D, H]: LSTM c_t, GRU W_hn h_{t-1} + b_hn
    len_ptr,  # [B] int64 (HAS_LENGTHS)
    dgx_ptr,  # [T, B, D, NG*H]
    dghn_ptr,  # [T, B, D, H] (GRU)
    dh0_ptr,  # [D, B, P]
    dc0_ptr,  # [D, B, H] (LSTM)
    dh_steps_ptr,  # [T, B, D, P] fp32 δh_t (KEEP_DH: the record, or a projection's)
    dc_steps_ptr,  # [T, B, D, H] fp32 δc_t (RECORD, LSTM)
    carry_ptr,  # [D, B, P] fp32: the gradient carried to h_{t-1}
    dc_buf_ptr,  # [D, B, H] fp32: the gradient carried to c_{t-1} (LSTM)
    da_buf_ptr,  # [2, D, B, NG*H] fp32: the gate gradients of steps t and t+1, for the recurrent product
    counter_ptr,  # [NBT*D] int32, zero: the barrier of each batch tile and direction (SYNC)
    T,
    B,
    H,
    P,
    i_begin,  # the phases this launch runs: [i_begin, i_end) of 1 + NPH·T
    i_end,
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
    KEEP_DH: tl.constexpr,
    RECORD: tl.constexpr,
    SYNC: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BC: tl.constexpr,
    BCP: tl.constexpr,
    PP: tl.constexpr,
    BK: tl.constexpr,
):
    NPH: tl.constexpr = 2 if PROJ else 1
    d, D, group, programs, rows, row_mask, j, jm, cols, cm = _program(B, H, P, BB, BH, BC, BCP)
    if HAS_LENGTHS:  # loaded here, not in a helper: torch.compile then sees len_ptr only read
        length = tl.load(len_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # [BB] valid steps
    else:
        length = tl.zeros((BB,), dtype=tl.int64) + T
    first = tl.where(d == 0, 0, T - length)  # [BB] the forward step where each sequence starts
    st_p = (d.to(tl.int64) * B + rows) * P
    st_u = (d.to(tl.int64) * B + rows) * H
    st_g = (d.to(tl.int64) * B + rows) * NG * H
    half = D.to(tl.int64) * B * NG * H  # one half of the gate-gradient double buffer
    w_hh = w_hh_ptr + d.to(tl.int64) * NG * H * P
    if PROJ:  # δm = δh_t W_hr for the program's units: W_hr[:, j] (BH >= 16), loaded once
        p_all = tl.arange(0, PP)
        w_hr = tl.load(
            w_hr_ptr + d.to(tl.int64) * P * H + p_all[:, None].to(tl.int64) * H + j[None, :],
            mask=(p_all < P)[:, None] & jm[None, :],
            other=0.0,
        )  # [PP, BH]
        if UPCAST:
            w_hr = w_hr.to(tl.float32)
    for i in range(i_begin, i_end):
        if i == 0:  # the gradients reaching the final state
            store_tile(
                carry_ptr, st_p, cols, row_mask, cm, load_state(dhn_ptr, st_p, cols, row_mask, cm, HAS_DHN)
            )
            if CELL == LSTM:
                store_tile(
                    dc_buf_ptr, st_u, j, row_mask, jm, load_state(dcn_ptr, st_u, j, row_mask, jm, HAS_DCN)
                )
            tl.debug_barrier()  # read back below by other threads of the program
        u = i // NPH  # the backward step: forward step s = T - 1 - u
        da_prev = da_buf_ptr + ((u + 1) % 2) * half  # the gate gradients of the step before (u - 1)
        if u < T:
            s = T - 1 - u
            t = tl.where(d == 0, s, T - 1 - s)
            is_valid = row_mask & (t < length)
            valid = is_valid[:, None]
            is_first = s == first
            prev_rows = seq_offset(t + tl.where(d == 0, -1, 1), rows, B, D, d, H)  # the step before t
            y_rows = seq_offset(t, rows, B, D, d, P)
            u_rows = seq_offset(t, rows, B, D, d, H)
            gx_rows = seq_offset(t, rows, B, D, d, NG * H)
            da_now = da_buf_ptr + (u % 2) * half
            if PROJ:
                if i % NPH == 0:  # the columns phase: δh_t = dy_t + carried for the program's columns
                    if u > 0:
                        _carry_product(
                            da_prev, w_hh, carry_ptr, st_p, st_g, cols, cm, row_mask, NG * H, P, UPCAST,
                            PRECISION, BB, BCP, BK,
                        )  # fmt: skip
                    carried = load_tile(carry_ptr, st_p, cols, row_mask, cm)
                    dy = load_state(dy_ptr, y_rows, cols, row_mask, cm, HAS_DY)
                    step_grad(carried, dy, dh_steps_ptr, y_rows, cols, row_mask, cm, valid, True)
                    tl.debug_barrier()
                    # what the carried gradient becomes at a valid step: the product adds to it next phase
                    store_tile(carry_ptr, st_p, cols, row_mask, cm, tl.where(valid, 0.0, carried))
            if i % NPH == NPH - 1:  # the units phase
                # first the loads that do not wait for δh_t, so that they overlap the product and the
                # load of δh_t: issued after them they would wait behind their bar.syncs
                s0, s1, s2, s3, aux, prev = cell_saved(
                    CELL, gates_ptr, aux_ptr, y_ptr, h0_ptr, c0_ptr, gx_rows, u_rows, prev_rows, st_u, j, jm,
                    row_mask, is_valid, is_first, H, HAS_H0, HAS_C0,
                )  # fmt: skip
                dc_carried = tl.zeros((BB, BH), dtype=tl.float32)
                if CELL == LSTM:
                    dc_carried = load_tile(dc_buf_ptr, st_u, j, row_mask, jm)
                if PROJ:
                    dh_all = _load_all(dh_steps_ptr, y_rows, P, row_mask, PP)  # [BB, PP] δh_t
                    dm = tl.dot(dh_all.to(w_hr.dtype), w_hr, input_precision=PRECISION)  # [BB, BH] δm_t
                else:
                    dy = load_state(dy_ptr, y_rows, j, row_mask, jm, HAS_DY)
                    if u > 0:  # carried += [gate gradients of every unit at step u-1] @ W_hh[:, columns]
                        _carry_product(
                            da_prev, w_hh, carry_ptr, st_p, st_g, cols, cm, row_mask, NG * H, P, UPCAST,
                            PRECISION, BB, BCP, BK,
                        )  # fmt: skip
                    carried_u = load_tile(carry_ptr, st_p, j, row_mask, jm)
                    dm = step_grad(carried_u, dy, dh_steps_ptr, y_rows, j, row_mask, jm, valid, KEEP_DH)
                g0, g1, g2, g3, p2, direct, dc, dc_prev = cell_grads(
                    CELL, dm, s0, s1, s2, s3, aux, prev, dc_carried, valid, zoneout, ZONED
                )
                if CELL == LSTM:
                    if RECORD:
                        store_tile(dc_steps_ptr, u_rows, j, row_mask, jm, tl.where(valid, dc, 0.0))
                    tl.debug_barrier()  # every thread has read the carried δc before any overwrites it
                    store_tile(dc_buf_ptr, st_u, j, row_mask, jm, dc_prev)
                store_grads(
                    CELL, dgx_ptr, da_now, dghn_ptr, gx_rows, u_rows, st_g, j, jm, row_mask, H,
                    g0, g1, g2, g3, p2, True,
                )  # fmt: skip
                if not PROJ:  # the carried gradient: what h_t gives h_{t-1} directly; the product adds to it
                    tl.debug_barrier()  # every thread has read `carried_u` before any overwrites it
                    store_tile(carry_ptr, st_p, j, row_mask, jm, tl.where(valid, direct, carried_u))
        else:  # the last phase: the product alone, what reaches h_{-1}
            _carry_product(
                da_prev, w_hh, carry_ptr, st_p, st_g, cols, cm, row_mask, NG * H, P, UPCAST, PRECISION,
                BB, BCP, BK,
            )  # fmt: skip
        if SYNC:
            grid_barrier(counter_ptr + group, (i + 1 - i_begin) * programs)
        else:
            tl.debug_barrier()
    if i_end == 1 + NPH * T:  # what reaches the initial state
        store_tile(dh0_ptr, st_p, cols, row_mask, cm, load_tile(carry_ptr, st_p, cols, row_mask, cm))
        if CELL == LSTM:
            store_tile(dc0_ptr, st_u, j, row_mask, jm, load_tile(dc_buf_ptr, st_u, j, row_mask, jm))


def _phases(launch_phases, T: int, NPH: int) -> None:
    # every phase in one launch on a GPU (a grid barrier between phases); one phase per launch under
    # the interpreter, whose programs run one after another
    total = 1 + NPH * T
    if interpreted():
        for i in range(total):
            launch_phases(i, i + 1, False)
    else:
        launch_phases(0, total, True)


def split_forward(
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
    """One layer's forward on the split kernel (``cell``: rnn_tanh, rnn_relu, lstm, gru); the launchers
    of `kernels.rnn`, `lstm` and `gru` call it where `_config.launch_config` chose this path.

    Returns:
        y [T, B, D, P], h_n [D, B, P], c_n [D, B, H] (LSTM), gates [T, B, D, NG*H] and the second
        saved tensor [T, B, D, H] (LSTM c_t, GRU W_hn h_{t-1} + b_hn) when training and the cell
        keeps them; None where not.
    """
    T, B, D, GH = gx.shape
    CELL, NG = CELL_IDS[cell], GATES[cell]
    H, P = GH // NG, w_hh.shape[2]
    f32 = torch.float32
    y, h_n, c_n, gates, aux = forward_outputs(cell, gx, P, training)
    h_buf = alloc((2, D, B, P), gx, f32)
    c_buf = alloc((D, B, H), gx, f32) if cell == "lstm" else None
    m_buf = alloc((D, B, H), gx, f32) if w_hr is not None else None
    grid = (triton.cdiv(H, cfg.BH), triton.cdiv(B, cfg.BB), D)
    counter = torch.zeros(grid[1] * D, dtype=torch.int32, device=gx.device)

    def launch_phases(i_begin, i_end, sync):
        launch(
            wrap_triton(_split_fwd_kernel), grid,
            gx_ptr=gx, w_hh_ptr=w_hh, w_hr_ptr=w_hr, b_hn_ptr=b_hn, h0_ptr=h0, c0_ptr=c0, len_ptr=lengths,
            y_ptr=y, hn_ptr=h_n, cn_ptr=c_n, gates_ptr=gates, aux_ptr=aux,
            h_buf_ptr=h_buf, c_buf_ptr=c_buf, m_buf_ptr=m_buf, counter_ptr=counter,
            T=T, B=B, H=H, P=P, i_begin=i_begin, i_end=i_end, zoneout=float(zoneout),
            CELL=CELL, ZONED=zoneout > 0, NG=NG, GP=triton.next_power_of_2(NG),
            HAS_H0=h0 is not None, HAS_C0=c0 is not None, HAS_BHN=b_hn is not None,
            HAS_LENGTHS=lengths is not None, PROJ=w_hr is not None, TRAINING=gates is not None, SYNC=sync,
            UPCAST=interpreted(), PRECISION=cfg.PRECISION,
            BB=cfg.BB, BH=cfg.BH, BC=cfg.BC, BCP=max(16, cfg.BC), PP=_padded(P), HP=_padded(H),
            num_warps=cfg.num_warps,
        )  # fmt: skip

    _phases(launch_phases, T, 2 if w_hr is not None else 1)
    return y, h_n, c_n, gates, aux


def split_backward(
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
    """One layer's backward on the split kernel, from what `split_forward` saved: ``y`` (RNN, GRU),
    ``gates`` and ``aux`` (LSTM, GRU).

    Returns:
        dgx [T, B, D, NG*H], dghn [T, B, D, H] (GRU), dh0 [D, B, P], dc0 [D, B, H] (LSTM), the fp32
        δh_t [T, B, D, P] (with ``record`` or a projection) and δc_t [T, B, D, H] (LSTM, ``record``);
        None where not.
    """
    like = y if y is not None else gates
    T, B, D = like.shape[:3]
    CELL, NG = CELL_IDS[cell], GATES[cell]
    H, P = w_hh.shape[1] // NG, w_hh.shape[2]
    f32 = torch.float32
    keep_dh = record or w_hr is not None
    dgx, dghn, dh0, dc0, dh_steps, dc_steps = backward_outputs(
        cell, like, H, P, record=record, keep_dh=keep_dh
    )
    carry = alloc((D, B, P), like, f32)
    dc_buf = alloc((D, B, H), like, f32) if cell == "lstm" else None
    da_buf = alloc((2, D, B, NG * H), like, f32)
    grid = (triton.cdiv(H, cfg.BH), triton.cdiv(B, cfg.BB), D)
    counter = torch.zeros(grid[1] * D, dtype=torch.int32, device=like.device)

    def launch_phases(i_begin, i_end, sync):
        launch(
            wrap_triton(_split_bwd_kernel), grid,
            dy_ptr=dy, dhn_ptr=dh_n, dcn_ptr=dc_n, w_hh_ptr=w_hh, w_hr_ptr=w_hr, h0_ptr=h0, c0_ptr=c0,
            y_ptr=y, gates_ptr=gates, aux_ptr=aux, len_ptr=lengths,
            dgx_ptr=dgx, dghn_ptr=dghn, dh0_ptr=dh0, dc0_ptr=dc0,
            dh_steps_ptr=dh_steps, dc_steps_ptr=dc_steps,
            carry_ptr=carry, dc_buf_ptr=dc_buf, da_buf_ptr=da_buf, counter_ptr=counter,
            T=T, B=B, H=H, P=P, i_begin=i_begin, i_end=i_end, zoneout=float(zoneout),
            CELL=CELL, ZONED=zoneout > 0, NG=NG, HAS_DY=dy is not None, HAS_DHN=dh_n is not None,
            HAS_DCN=dc_n is not None,
            HAS_H0=h0 is not None, HAS_C0=c0 is not None, HAS_LENGTHS=lengths is not None,
            PROJ=w_hr is not None, KEEP_DH=keep_dh, RECORD=record, SYNC=sync, UPCAST=interpreted(),
            PRECISION=cfg.PRECISION, BB=cfg.BB, BH=cfg.BH, BC=cfg.BC, BCP=max(16, cfg.BC), PP=_padded(P),
            BK=cfg.BK, num_warps=cfg.num_warps,
        )  # fmt: skip

    _phases(launch_phases, T, 2 if w_hr is not None else 1)
    return dgx, dghn, dh0, dc0, dh_steps, dc_steps


def _padded(n: int) -> int:
    # a width padded to a power of two of at least 16 (tl.arange and tl.dot)
    return max(16, triton.next_power_of_2(n))
