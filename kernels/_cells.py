"""The gate math of each cell, written once for every kernel: forward, the activations, saved tensors
and new state of a block of units from their pre-activations; backward, their gate gradients (to dgx
and to the buffer of the recurrent product) and what the cell carries itself.

# BB batch rows, BH units (j), H hidden; offsets are int64 rows of [.., G*H] (gx_rows, st_g) or
# [.., H] (u_rows, st_u) tensors; `valid` [BB, 1] masks the steps past a sequence's length
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels._tiles import load_previous, load_tile, sigmoid, split4, store_tile, tanh


@triton.jit
def rnn_units(acc, x, RELU: tl.constexpr):
    a = x + acc
    if RELU:
        h = tl.maximum(a, 0.0)
    else:
        h = tanh(a)
    return h


@triton.jit
def lstm_units(
    acc, x_i, x_f, x_g, x_o, c_prev, gx_rows, j, jm, row_mask, valid, H, c_buf_ptr, st_u, gates_ptr,
    c_steps_ptr, u_rows, TRAINING: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    # x_*: the gates' input pre-activations (gx), c_prev: c_{t-1}, loaded by the caller
    a_i, a_f, a_g, a_o = split4(acc, BB, BH)
    i = sigmoid(x_i + a_i)
    f = sigmoid(x_f + a_f)
    g = tanh(x_g + a_g)
    o = sigmoid(x_o + a_o)
    c = f * c_prev + i * g
    tl.debug_barrier()  # every thread has read c_{t-1} before any overwrites it
    store_tile(c_buf_ptr, st_u, j, row_mask, jm, tl.where(valid, c, c_prev))
    if TRAINING:
        store_tile(gates_ptr, gx_rows, j, row_mask, jm, tl.where(valid, i, 0.0))
        store_tile(gates_ptr, gx_rows, H + j, row_mask, jm, tl.where(valid, f, 0.0))
        store_tile(gates_ptr, gx_rows, 2 * H + j, row_mask, jm, tl.where(valid, g, 0.0))
        store_tile(gates_ptr, gx_rows, 3 * H + j, row_mask, jm, tl.where(valid, o, 0.0))
        store_tile(c_steps_ptr, u_rows, j, row_mask, jm, tl.where(valid, c, 0.0))
    return o * tanh(c)


@triton.jit
def gru_units(
    acc, x_r, x_z, x_n, h_prev, b_hn, gx_rows, j, jm, row_mask, valid, H, gates_ptr, ghn_ptr, u_rows,
    TRAINING: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    # x_*: the gates' input pre-activations (gx), loaded by the caller
    h_r, h_z, h_n, _ = split4(acc, BB, BH)
    r = sigmoid(x_r + h_r)
    z = sigmoid(x_z + h_z)
    ghn = h_n + b_hn
    n = tanh(x_n + r * ghn)
    if TRAINING:
        store_tile(gates_ptr, gx_rows, j, row_mask, jm, tl.where(valid, r, 0.0))
        store_tile(gates_ptr, gx_rows, H + j, row_mask, jm, tl.where(valid, z, 0.0))
        store_tile(gates_ptr, gx_rows, 2 * H + j, row_mask, jm, tl.where(valid, n, 0.0))
        store_tile(ghn_ptr, u_rows, j, row_mask, jm, tl.where(valid, ghn, 0.0))
    return n + z * (h_prev - n)


@triton.jit
def store_twice(dgx_ptr, gx_rows, da_ptr, st_g, cols, row_mask, col_mask, da):
    # a gate gradient: to dgx (the storage dtype) and to the fp32 buffer of the recurrent product
    store_tile(dgx_ptr, gx_rows, cols, row_mask, col_mask, da)
    store_tile(da_ptr, st_g, cols, row_mask, col_mask, da)


@triton.jit
def rnn_grads(dh, h, valid, RELU: tl.constexpr):
    # the pre-activation gradient from δh_t and h_t
    if RELU:
        da = tl.where(valid & (h > 0), dh, 0.0)
    else:
        da = tl.where(valid, dh * (1.0 - h * h), 0.0)
    return da


@triton.jit
def rnn_units_bwd(dh, y_ptr, u_rows, j, jm, row_mask, valid, RELU: tl.constexpr):
    return rnn_grads(dh, load_tile(y_ptr, u_rows, j, row_mask, jm), valid, RELU)


@triton.jit
def lstm_saved(
    gates_ptr, c_steps_ptr, c0_ptr, dc_buf_ptr, gx_rows, u_rows, prev_rows, st_u, j, jm, row_mask, is_valid,
    is_first, H, HAS_C0: tl.constexpr,
):  # fmt: skip
    # what the backward of a step reads before δh_t is known: the saved gates, tanh(c_t), c_{t-1} and
    # the carried δc (a kernel can issue these loads early, so that they overlap its other work)
    i = load_tile(gates_ptr, gx_rows, j, row_mask, jm)
    f = load_tile(gates_ptr, gx_rows, H + j, row_mask, jm)
    g = load_tile(gates_ptr, gx_rows, 2 * H + j, row_mask, jm)
    o = load_tile(gates_ptr, gx_rows, 3 * H + j, row_mask, jm)
    tanh_c = tanh(load_tile(c_steps_ptr, u_rows, j, row_mask, jm))
    c_prev = load_previous(c_steps_ptr, prev_rows, c0_ptr, st_u, j, jm, is_valid, is_first, HAS_C0)
    dc_carried = load_tile(dc_buf_ptr, st_u, j, row_mask, jm)
    return i, f, g, o, tanh_c, c_prev, dc_carried


@triton.jit
def lstm_grads(
    dm, i, f, g, o, tanh_c, c_prev, dc_carried, dc_buf_ptr, dc_steps_ptr, dgx_ptr, da_ptr, gx_rows, u_rows,
    st_u, st_g, j, jm, row_mask, valid, H, RECORD: tl.constexpr,
):  # fmt: skip
    # the gate gradients (to dgx and the product's buffer) and the carried δc, from δm_t and `lstm_saved`
    dc = dc_carried + dm * o * (1.0 - tanh_c * tanh_c)  # δc_t, the total
    if RECORD:
        store_tile(dc_steps_ptr, u_rows, j, row_mask, jm, tl.where(valid, dc, 0.0))
    tl.debug_barrier()  # every thread has read the carried δc before any overwrites it
    store_tile(dc_buf_ptr, st_u, j, row_mask, jm, tl.where(valid, dc * f, dc_carried))
    da_i = tl.where(valid, dc * g * i * (1.0 - i), 0.0)
    da_f = tl.where(valid, dc * c_prev * f * (1.0 - f), 0.0)
    da_g = tl.where(valid, dc * i * (1.0 - g * g), 0.0)
    da_o = tl.where(valid, dm * tanh_c * o * (1.0 - o), 0.0)
    store_twice(dgx_ptr, gx_rows, da_ptr, st_g, j, row_mask, jm, da_i)
    store_twice(dgx_ptr, gx_rows, da_ptr, st_g, H + j, row_mask, jm, da_f)
    store_twice(dgx_ptr, gx_rows, da_ptr, st_g, 2 * H + j, row_mask, jm, da_g)
    store_twice(dgx_ptr, gx_rows, da_ptr, st_g, 3 * H + j, row_mask, jm, da_o)


@triton.jit
def lstm_units_bwd(
    dm, gates_ptr, c_steps_ptr, c0_ptr, dc_buf_ptr, dc_steps_ptr, dgx_ptr, da_ptr, gx_rows, u_rows, prev_rows,
    st_u, st_g, j, jm, row_mask, valid, is_valid, is_first, H,
    HAS_C0: tl.constexpr, RECORD: tl.constexpr,
):  # fmt: skip
    i, f, g, o, tanh_c, c_prev, dc_carried = lstm_saved(
        gates_ptr, c_steps_ptr, c0_ptr, dc_buf_ptr, gx_rows, u_rows, prev_rows, st_u, j, jm, row_mask,
        is_valid, is_first, H, HAS_C0,
    )  # fmt: skip
    lstm_grads(
        dm, i, f, g, o, tanh_c, c_prev, dc_carried, dc_buf_ptr, dc_steps_ptr, dgx_ptr, da_ptr, gx_rows,
        u_rows, st_u, st_g, j, jm, row_mask, valid, H, RECORD,
    )  # fmt: skip


@triton.jit
def gru_saved(
    gates_ptr, ghn_ptr, y_ptr, h0_ptr, gx_rows, u_rows, prev_rows, st_u, j, jm, row_mask, is_valid, is_first,
    H, HAS_H0: tl.constexpr,
):  # fmt: skip
    # what the backward of a step reads before δh_t is known: the saved gates, W_hn h + b_hn, h_{t-1}
    r = load_tile(gates_ptr, gx_rows, j, row_mask, jm)
    z = load_tile(gates_ptr, gx_rows, H + j, row_mask, jm)
    n = load_tile(gates_ptr, gx_rows, 2 * H + j, row_mask, jm)
    ghn = load_tile(ghn_ptr, u_rows, j, row_mask, jm)
    h_prev = load_previous(y_ptr, prev_rows, h0_ptr, st_u, j, jm, is_valid, is_first, HAS_H0)
    return r, z, n, ghn, h_prev


@triton.jit
def gru_grads(
    dh, r, z, n, ghn, h_prev, dgx_ptr, dghn_ptr, da_ptr, gx_rows, u_rows, st_g, j, jm, row_mask, valid, H,
):  # fmt: skip
    # the gate gradients (to dgx, dghn and the product's buffer) from δh_t and `gru_saved`
    dn = tl.where(valid, dh * (1.0 - z) * (1.0 - n * n), 0.0)
    dr = tl.where(valid, dn * ghn * r * (1.0 - r), 0.0)
    dz = tl.where(valid, dh * (h_prev - n) * z * (1.0 - z), 0.0)
    dghn = dn * r
    store_twice(dgx_ptr, gx_rows, da_ptr, st_g, j, row_mask, jm, dr)
    store_twice(dgx_ptr, gx_rows, da_ptr, st_g, H + j, row_mask, jm, dz)
    store_tile(dgx_ptr, gx_rows, 2 * H + j, row_mask, jm, dn)
    store_tile(da_ptr, st_g, 2 * H + j, row_mask, jm, dghn)  # the hidden side's: W_hn h + b_hn
    store_tile(dghn_ptr, u_rows, j, row_mask, jm, dghn)
    return dh * z  # what h_{t-1} gets directly from h_t = n + z ⊙ (h_{t-1} - n)


@triton.jit
def gru_units_bwd(
    dh, gates_ptr, ghn_ptr, y_ptr, h0_ptr, dgx_ptr, dghn_ptr, da_ptr, gx_rows, u_rows, prev_rows, st_u, st_g,
    j, jm, row_mask, valid, is_valid, is_first, H, HAS_H0: tl.constexpr,
):  # fmt: skip
    r, z, n, ghn, h_prev = gru_saved(
        gates_ptr, ghn_ptr, y_ptr, h0_ptr, gx_rows, u_rows, prev_rows, st_u, j, jm, row_mask, is_valid,
        is_first, H, HAS_H0,
    )  # fmt: skip
    return gru_grads(
        dh, r, z, n, ghn, h_prev, dgx_ptr, dghn_ptr, da_ptr, gx_rows, u_rows, st_g, j, jm, row_mask, valid, H,
    )  # fmt: skip
