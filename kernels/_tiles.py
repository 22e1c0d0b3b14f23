"""Triton helpers shared by the recurrent kernels: activations and tiled row-block products.

# BB batch rows, BN output columns, BK reduction tile; every offset is int64
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # exp of a non-positive argument only: no overflow for large |x|
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def load_tile(ptr, row_off, cols, row_mask, col_mask):
    # [BB, BN] fp32 from ptr + row_off[:, None] + cols[None, :] (unit column stride), 0 where masked
    mask = row_mask[:, None] & col_mask[None, :]
    return tl.load(ptr + row_off[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_tile(ptr, row_off, cols, row_mask, col_mask, value):
    mask = row_mask[:, None] & col_mask[None, :]
    tl.store(ptr + row_off[:, None] + cols[None, :], value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def dot_rows_wt(
    acc, a_ptr, a_rows, row_mask, K, w_ptr, w_rows, w_row_mask, PRECISION: tl.constexpr, BK: tl.constexpr
):
    # acc [BB, BN] += A [BB, K] @ W[w_rows, :K]ᵀ; A's rows at a_ptr + a_rows, W row-major with K columns
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        k_mask = k < K
        a = load_tile(a_ptr, a_rows, k, row_mask, k_mask)  # [BB, BK]
        w = load_tile(w_ptr, w_rows.to(tl.int64) * K, k, w_row_mask, k_mask)  # [BN, BK]
        acc += tl.dot(a, tl.trans(w), input_precision=PRECISION)
    return acc


@triton.jit
def dot_rows_w(
    acc, a_ptr, a_rows, row_mask, K, w_ptr, N, w_cols, w_col_mask, PRECISION: tl.constexpr, BK: tl.constexpr
):
    # acc [BB, BN] += A [BB, K] @ W[:K, w_cols]; W row-major [K, N]
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        k_mask = k < K
        a = load_tile(a_ptr, a_rows, k, row_mask, k_mask)  # [BB, BK]
        w = load_tile(w_ptr, k.to(tl.int64) * N, w_cols, k_mask, w_col_mask)  # [BK, BN]
        acc += tl.dot(a, w, input_precision=PRECISION)
    return acc


@triton.jit
def seq_offset(t, rows, B, D, d, width):
    # [BB] int64 offsets of rows (t, rows, d) of a [T, B, D, width] tensor
    return ((t.to(tl.int64) * B + rows) * D + d) * width


@triton.jit
def state_offset(rows, B, d, width):
    # [BB] int64 offsets of rows (d, rows) of a [D, B, width] tensor
    return (d.to(tl.int64) * B + rows) * width


@triton.jit
def copy_rows(dst_ptr, src_ptr, row_off, row_mask, N, HAS_SRC: tl.constexpr, BN: tl.constexpr):
    # dst[rows, :N] = src[rows, :N] (or zeros without a source), converted to dst's dtype
    for n0 in range(0, N, BN):
        n = n0 + tl.arange(0, BN)
        n_mask = n < N
        store_tile(
            dst_ptr, row_off, n, row_mask, n_mask, load_state(src_ptr, row_off, n, row_mask, n_mask, HAS_SRC)
        )


@triton.jit
def program_rows(B, BB: tl.constexpr):
    # this program's direction d (of D), its batch rows [BB] (int64) and their mask. Each kernel then
    # loads its rows' lengths itself, not through a helper: torch.compile reads a kernel's writes off
    # its TTIR and counts every argument of a helper call that feeds a stored address as written,
    # which would make it copy the lengths on every call
    d = tl.program_id(1)
    D = tl.num_programs(1)
    rows = (tl.program_id(0) * BB + tl.arange(0, BB)).to(tl.int64)
    return d, D, rows, rows < B


@triton.jit
def total_step_grad(
    dh_buf_ptr, dy_ptr, dh_steps_ptr, st_h, dy_rows, dh_rows, row_mask, valid, P,
    HAS_DY: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    # δh_t = dy_t + the gradient carried from step t+1, written to dh_steps (zero at masked steps)
    for p0 in range(0, P, BK):
        p = p0 + tl.arange(0, BK)
        pm = p < P
        dh = load_tile(dh_buf_ptr, st_h, p, row_mask, pm)
        if HAS_DY:
            dh += load_tile(dy_ptr, dy_rows, p, row_mask, pm)
        store_tile(dh_steps_ptr, dh_rows, p, row_mask, pm, tl.where(valid, dh, 0.0))


@triton.jit
def carry_back(
    dh_buf_ptr, dg_buf_ptr, w_ptr, direct_ptr, st_h, st_g, row_mask, valid, K, P,
    HAS_DIRECT: tl.constexpr, PRECISION: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    # the gradient carried to h_{t-1}: (direct +) δa_t [BB, K] @ W_hh [K, P]; a masked step keeps it
    for p0 in range(0, P, BN):
        p = p0 + tl.arange(0, BN)
        pm = p < P
        if HAS_DIRECT:
            acc = load_tile(direct_ptr, st_h, p, row_mask, pm)
        else:
            acc = tl.zeros((BB, BN), dtype=tl.float32)
        acc = dot_rows_w(acc, dg_buf_ptr, st_g, row_mask, K, w_ptr, P, p, pm, PRECISION, BK)
        carried = load_tile(dh_buf_ptr, st_h, p, row_mask, pm)
        store_tile(dh_buf_ptr, st_h, p, row_mask, pm, tl.where(valid, acc, carried))


@triton.jit
def load_previous(
    steps_ptr, prev_rows, init_ptr, st, cols, col_mask, is_valid, is_first, HAS_INIT: tl.constexpr
):
    # the state entering step t: the previous step's (from steps), or the initial state at a
    # sequence's first step (zeros without one); 0 at masked steps
    value = load_tile(steps_ptr, prev_rows, cols, is_valid & (is_first == 0), col_mask)
    if HAS_INIT:
        value += load_tile(init_ptr, st, cols, is_valid & is_first, col_mask)
    return value


@triton.jit
def weight_rows(w_ptr, unit0, H, K, NG, GP: tl.constexpr, BH: tl.constexpr, KP: tl.constexpr):
    # [GP*BH, KP] in w's dtype: units unit0 .. unit0+BH-1 of W [NG*H, K] (row-major) with each unit's
    # gates side by side, row n*GP + q holding W[q*H + unit0 + n, :K] (zero past H, past NG gates and
    # past K; GP = NG rounded up to a power of two). One product with it gives every gate of those
    # units (see `_cells.split_gates`); loaded before a time loop, Triton keeps it in shared memory
    n = tl.arange(0, BH)[:, None, None]
    q = tl.arange(0, GP)[None, :, None]
    k = tl.arange(0, KP)[None, None, :]
    unit = unit0 + n
    mask = (unit < H) & (q < NG) & (k < K)
    w = tl.load(w_ptr + (q * H + unit).to(tl.int64) * K + k, mask=mask, other=0.0)
    return tl.reshape(w, (GP * BH, KP))


@triton.jit
def resident_weights(w_ptr, H, NG, G: tl.constexpr, BH: tl.constexpr):
    # [G*BH, BH] fp32: all of W_hh [NG*H, H] for the resident kernels (one tile of BH >= H units); the
    # forward multiplies by its transpose
    return weight_rows(w_ptr, 0, H, H, NG, G, BH, BH).to(tl.float32)


@triton.jit
def grid_barrier(counter_ptr, target):
    # wait until the programs that share this counter (zero at launch) have arrived `target` times in
    # all: what each wrote before is then visible to the `.cg` loads of every other. Only for programs
    # all resident at once (never under the interpreter: it runs them in turn)
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while arrived < target:
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def load_state(ptr, row_off, cols, row_mask, col_mask, HAS_STATE: tl.constexpr):
    # [rows, cols] fp32 of a state (zeros without one)
    if HAS_STATE:
        value = load_tile(ptr, row_off, cols, row_mask, col_mask)
    else:
        value = tl.zeros((row_off.shape[0], cols.shape[0]), dtype=tl.float32)
    return value


@triton.jit
def step_grad(carried, dy, dh_steps_ptr, rows_t, cols, row_mask, col_mask, valid, RECORD: tl.constexpr):
    # δh_t = carried + dy_t in registers (zero at masked steps; dy_t loaded by the caller, zeros without
    # one: `load_state`), written to the record when kept (dy and the record share the [T, B, D, P]
    # layout): the resident and the split kernels' step
    dh = tl.where(valid, carried + dy, 0.0)
    if RECORD:
        store_tile(dh_steps_ptr, rows_t, cols, row_mask, col_mask, dh)
    return dh
