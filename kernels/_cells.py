"""The gate math of each cell, written once for every kernel (design A's resident and streamed
kernels in `kernels/tiled.py`, design B's in `kernels/split.py`): which cell a kernel runs is the
constexpr CELL, and every function here branches on it at compile time.

Forward: `load_gates` (the step's input pre-activations), `cell_forward` (activations and new
state, in registers), `save_step` (what the backward reads). Backward: `cell_saved` (those saved
tensors, loaded before δh_t is known so that a kernel can overlap them with its other work),
`cell_grads` (the gradients, in registers) and `store_grads`. The kernels own the loop, the products,
the state and where it lives (registers, or fp32 scratch rows in global memory).

# BB batch rows, BH units (j), H hidden, NG gates (RNN 1, LSTM 4, GRU 3); offsets are int64 rows of
# [.., NG*H] (gx_rows, st_g) or [.., H] (u_rows, st_u) tensors; `valid` [BB, 1] masks the steps past
# a sequence's length. Per unit, gate q of a [.., NG*H] row is at column q*H + j
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._config import alloc
from kernels._tiles import load_previous, load_tile, sigmoid, store_tile, tanh

# the CELL constexpr of the kernels (globals a kernel reads must be constexprs)
RNN_TANH, RNN_RELU, LSTM, GRU = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2), tl.constexpr(3)
CELL_IDS = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}

Maybe = torch.Tensor | None


def forward_outputs(
    cell: str, gx: torch.Tensor, P: int, training: bool
) -> tuple[torch.Tensor, torch.Tensor, Maybe, Maybe, Maybe]:
    """What one layer's forward of ``cell`` returns, allocated like ``gx`` [T, B, D, NG*H]: y
    [T, B, D, P], h_n [D, B, P], c_n [D, B, H] (LSTM), and when training the saved gates [T, B, D, NG*H]
    and second tensor [T, B, D, H] (LSTM c_t, GRU W_hn h_{t-1} + b_hn; an RNN saves nothing)."""
    T, B, D, GH = gx.shape
    H = GH // GATES[cell]
    saves = training and cell in ("lstm", "gru")
    c_n = alloc((D, B, H), gx) if cell == "lstm" else None
    gates = alloc((T, B, D, GH), gx) if saves else None
    aux = alloc((T, B, D, H), gx) if saves else None
    return alloc((T, B, D, P), gx), alloc((D, B, P), gx), c_n, gates, aux


def backward_outputs(
    cell: str, like: torch.Tensor, H: int, P: int, *, record: bool, keep_dh: bool
) -> tuple[torch.Tensor, Maybe, torch.Tensor, Maybe, Maybe, Maybe]:
    """What one layer's backward of ``cell`` returns, allocated like ``like`` [T, B, D, ...]: dgx
    [T, B, D, NG*H], dghn [T, B, D, H] (GRU), dh0 [D, B, P], dc0 [D, B, H] (LSTM), the fp32 δh_t
    [T, B, D, P] (``keep_dh``: the record, or a projection's) and δc_t [T, B, D, H] (LSTM, ``record``)."""
    T, B, D = like.shape[:3]
    lstm = cell == "lstm"
    f32 = torch.float32
    dghn = alloc((T, B, D, H), like) if cell == "gru" else None
    dc0 = alloc((D, B, H), like) if lstm else None
    dh_steps = alloc((T, B, D, P), like, f32) if keep_dh else None
    dc_steps = alloc((T, B, D, H), like, f32) if record and lstm else None
    return alloc((T, B, D, GATES[cell] * H), like), dghn, alloc((D, B, P), like), dc0, dh_steps, dc_steps


@triton.jit
def load_gates(gx_ptr, gx_rows, j, jm, row_mask, H, NG: tl.constexpr):
    # the step's input pre-activations of units j, one [BB, BH] fp32 tile per gate (zeros past NG)
    x0 = load_tile(gx_ptr, gx_rows, j, row_mask, jm)
    x1 = tl.zeros_like(x0)
    x2 = tl.zeros_like(x0)
    x3 = tl.zeros_like(x0)
    if NG > 1:
        x1 = load_tile(gx_ptr, gx_rows, H + j, row_mask, jm)
    if NG > 2:
        x2 = load_tile(gx_ptr, gx_rows, 2 * H + j, row_mask, jm)
    if NG > 3:
        x3 = load_tile(gx_ptr, gx_rows, 3 * H + j, row_mask, jm)
    return x0, x1, x2, x3


@triton.jit
def candidate_bias(b_hn_ptr, d, H, j, jm, HAS_BHN: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr):
    # [BB, BH] fp32: the GRU's hidden-side candidate bias b_hn [D, H] of units j (zeros without one)
    b_hn = tl.zeros((BB, BH), dtype=tl.float32)
    if HAS_BHN:
        b_hn += tl.load(b_hn_ptr + d.to(tl.int64) * H + j, mask=jm, other=0.0).to(tl.float32)[None, :]
    return b_hn


@triton.jit
def cell_forward(
    CELL: tl.constexpr, x0, x1, x2, x3, a0, a1, a2, a3, h_prev, c_prev, b_hn, zoneout, ZONED: tl.constexpr
):  # fmt: skip
    # one step of units j from the input pre-activations x* and the hidden side a* = h_{t-1} W_hhᵀ of
    # each gate; h_prev (GRU) and c_prev (LSTM) are the units' state entering the step, b_hn the GRU's
    # hidden-side candidate bias. Returns h_t (LSTM: m_t = o ⊙ tanh c_t, before a projection), c_t
    # (c_prev for other cells), the activated gates s0..s3 and the second saved tensor (LSTM c_t,
    # GRU W_hn h_{t-1} + b_hn); what a cell does not have is its input, unused. ZONED (LSTM): cell
    # zoneout's expectation with probability zoneout, i' = (1 - p) i and f' = p + (1 - p) f
    if CELL == LSTM:
        s0 = sigmoid(x0 + a0)
        s1 = sigmoid(x1 + a1)
        s2 = tanh(x2 + a2)
        s3 = sigmoid(x3 + a3)
        if ZONED:
            c = (zoneout + (1.0 - zoneout) * s1) * c_prev + ((1.0 - zoneout) * s0) * s2
        else:
            c = s1 * c_prev + s0 * s2
        h = s3 * tanh(c)
        aux = c
    elif CELL == GRU:
        s0 = sigmoid(x0 + a0)
        s1 = sigmoid(x1 + a1)
        aux = a2 + b_hn
        s2 = tanh(x2 + s0 * aux)
        s3 = s2
        h = s2 + s1 * (h_prev - s2)
        c = c_prev
    else:
        if CELL == RNN_RELU:
            h = tl.maximum(x0 + a0, 0.0)
        else:
            h = tanh(x0 + a0)
        s0, s1, s2, s3, aux, c = h, h, h, h, h, c_prev
    return h, c, s0, s1, s2, s3, aux


@triton.jit
def save_step(
    CELL: tl.constexpr, gates_ptr, aux_ptr, gx_rows, u_rows, j, jm, row_mask, valid, H, s0, s1, s2, s3, aux,
):  # fmt: skip
    # what the backward reads (LSTM and GRU; an RNN's output is all it needs): zero at masked steps
    if CELL == LSTM or CELL == GRU:  # noqa: SIM109 (a tuple of constexprs is not Triton)
        store_tile(gates_ptr, gx_rows, j, row_mask, jm, tl.where(valid, s0, 0.0))
        store_tile(gates_ptr, gx_rows, H + j, row_mask, jm, tl.where(valid, s1, 0.0))
        store_tile(gates_ptr, gx_rows, 2 * H + j, row_mask, jm, tl.where(valid, s2, 0.0))
        if CELL == LSTM:
            store_tile(gates_ptr, gx_rows, 3 * H + j, row_mask, jm, tl.where(valid, s3, 0.0))
        store_tile(aux_ptr, u_rows, j, row_mask, jm, tl.where(valid, aux, 0.0))


@triton.jit
def cell_saved(
    CELL: tl.constexpr, gates_ptr, aux_ptr, y_ptr, h0_ptr, c0_ptr, gx_rows, u_rows, prev_rows, st_u, j, jm,
    row_mask, is_valid, is_first, H, HAS_H0: tl.constexpr, HAS_C0: tl.constexpr,
):  # fmt: skip
    # what the backward of a step reads before δh_t is known: the activated gates s0..s3, the second
    # saved tensor (LSTM c_t, GRU W_hn h_{t-1} + b_hn, RNN h_t) and the state entering the step (LSTM
    # c_{t-1}, GRU h_{t-1}; the initial state at a sequence's first step)
    if CELL == LSTM or CELL == GRU:  # noqa: SIM109 (a tuple of constexprs is not Triton)
        s0 = load_tile(gates_ptr, gx_rows, j, row_mask, jm)
        s1 = load_tile(gates_ptr, gx_rows, H + j, row_mask, jm)
        s2 = load_tile(gates_ptr, gx_rows, 2 * H + j, row_mask, jm)
        aux = load_tile(aux_ptr, u_rows, j, row_mask, jm)
        if CELL == LSTM:
            s3 = load_tile(gates_ptr, gx_rows, 3 * H + j, row_mask, jm)
            prev = load_previous(aux_ptr, prev_rows, c0_ptr, st_u, j, jm, is_valid, is_first, HAS_C0)
        else:
            s3 = s2
            prev = load_previous(y_ptr, prev_rows, h0_ptr, st_u, j, jm, is_valid, is_first, HAS_H0)
    else:
        aux = load_tile(y_ptr, u_rows, j, row_mask, jm)
        s0, s1, s2, s3, prev = aux, aux, aux, aux, aux
    return s0, s1, s2, s3, aux, prev


@triton.jit
def cell_grads(
    CELL: tl.constexpr, dm, s0, s1, s2, s3, aux, prev, dc_carried, valid, zoneout, ZONED: tl.constexpr
):  # fmt: skip
    # the gradients of a step's units from δm_t (δh_t; LSTM with a projection: δh_t W_hr), zero at
    # masked steps, what `cell_saved` loaded and the carried δc (LSTM). Returns the gate gradients
    # g0..g3 (to dgx), the third column of the recurrent product's operand (GRU: δ(W_hn h + b_hn);
    # else g2), what h_{t-1} gets directly (GRU δh ⊙ z; else 0), δc_t (LSTM, the total) and the δc
    # carried to c_{t-1}
    if CELL == LSTM:
        tanh_c = tanh(aux)
        dc = dc_carried + dm * s3 * (1.0 - tanh_c * tanh_c)
        dk = dc  # δc_t's share of i and f: (1 - p) with zoneout's expectation (ZONED)
        forget = s1  # what δc_t passes to c_{t-1}: f, or f' = p + (1 - p) f
        if ZONED:
            dk = dc * (1.0 - zoneout)
            forget = zoneout + (1.0 - zoneout) * s1
        g0 = tl.where(valid, dk * s2 * s0 * (1.0 - s0), 0.0)
        g1 = tl.where(valid, dk * prev * s1 * (1.0 - s1), 0.0)
        g2 = tl.where(valid, dk * s0 * (1.0 - s2 * s2), 0.0)
        g3 = tl.where(valid, dm * tanh_c * s3 * (1.0 - s3), 0.0)
        # at a masked step δm is 0, so δc_t is the carried δc: it passes through. (Written as a
        # product, not tl.where(valid, δc·f, δc): beside a resident product that form made LLVM's SLP
        # vectorizer abort for sm_90)
        dc_prev = dc * tl.where(valid, forget, 1.0)
        p2, direct = g2, tl.zeros_like(dm)
    elif CELL == GRU:
        g2 = tl.where(valid, dm * (1.0 - s1) * (1.0 - s2 * s2), 0.0)
        g0 = tl.where(valid, g2 * aux * s0 * (1.0 - s0), 0.0)
        g1 = tl.where(valid, dm * (prev - s2) * s1 * (1.0 - s1), 0.0)
        p2, direct = g2 * s0, dm * s1
        g3, dc, dc_prev = tl.zeros_like(dm), dc_carried, dc_carried
    else:
        if CELL == RNN_RELU:
            g0 = tl.where(valid & (aux > 0), dm, 0.0)
        else:
            g0 = tl.where(valid, dm * (1.0 - aux * aux), 0.0)
        g1, g2, g3, p2, direct, dc, dc_prev = g0, g0, g0, g0, tl.zeros_like(dm), dc_carried, dc_carried
    return g0, g1, g2, g3, p2, direct, dc, dc_prev


@triton.jit
def store_grads(
    CELL: tl.constexpr, dgx_ptr, da_ptr, dghn_ptr, gx_rows, u_rows, st_g, j, jm, row_mask, H, g0, g1, g2, g3,
    p2, TO_BUFFER: tl.constexpr,
):  # fmt: skip
    # a step's gate gradients to dgx (the storage dtype), the GRU's δ(W_hn h + b_hn) to dghn, and with
    # TO_BUFFER the recurrent product's operand (g0, g1, p2, g3) to an fp32 row [.., NG*H] that other
    # tiles or programs read
    store_tile(dgx_ptr, gx_rows, j, row_mask, jm, g0)
    if TO_BUFFER:
        store_tile(da_ptr, st_g, j, row_mask, jm, g0)
    if CELL == LSTM or CELL == GRU:  # noqa: SIM109 (a tuple of constexprs is not Triton)
        store_tile(dgx_ptr, gx_rows, H + j, row_mask, jm, g1)
        store_tile(dgx_ptr, gx_rows, 2 * H + j, row_mask, jm, g2)
        if TO_BUFFER:
            store_tile(da_ptr, st_g, H + j, row_mask, jm, g1)
            store_tile(da_ptr, st_g, 2 * H + j, row_mask, jm, p2)
    if CELL == LSTM:
        store_tile(dgx_ptr, gx_rows, 3 * H + j, row_mask, jm, g3)
        if TO_BUFFER:
            store_tile(da_ptr, st_g, 3 * H + j, row_mask, jm, g3)
    if CELL == GRU:
        store_tile(dghn_ptr, u_rows, j, row_mask, jm, p2)


@triton.jit
def split_gates(acc, GP: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr):
    # the hidden side of each gate from one product against gate-interleaved weights ([BB, GP*BH],
    # column n*GP + q gate q of unit n; GP 1 or 4)
    if GP == 1:
        a0, a1, a2, a3 = acc, acc, acc, acc
    else:
        a0, a1, a2, a3 = split4(acc, BB, BH)
    return a0, a1, a2, a3


@triton.jit
def join_gates(g0, g1, g2, g3, GP: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr):
    # the inverse of `split_gates`: the gate gradients as one [BB, GP*BH] operand
    if GP == 1:
        out = g0
    else:
        out = join4(g0, g1, g2, g3, BB, BH)
    return out


@triton.jit
def split4(a, BB: tl.constexpr, BH: tl.constexpr):
    # the four [BB, BH] gate blocks of a [BB, 4*BH] product whose column n*4 + q is gate q of unit n
    even, odd = tl.split(tl.reshape(a, (BB, BH, 2, 2)))  # gates 0, 2 and 1, 3
    a0, a2 = tl.split(even)
    a1, a3 = tl.split(odd)
    return a0, a1, a2, a3


@triton.jit
def join4(a0, a1, a2, a3, BB: tl.constexpr, BH: tl.constexpr):
    # the inverse of `split4`: [BB, 4*BH], column n*4 + q from gate block q
    return tl.reshape(tl.join(tl.join(a0, a2), tl.join(a1, a3)), (BB, 4 * BH))
