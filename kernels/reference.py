"""PyTorch reference of every recurrent kernel: the contract every backend implements.

Each cell has a forward and an explicit backward (BPTT written out with tensor ops, no autograd
through the time loop), one direction at a time, one step at a time: written to be read, not to be
fast (`kernels.cpu` is the fast CPU backend, `kernels.rnn`, `lstm`, `gru` the Triton one). The math
runs in float32 (float64 for float64 inputs) and the results are cast back to the storage dtype, as
the kernels do. Every output is a new dense tensor. The derivations are in `kernels/README.md`.

Layout shared by every function (time-major, both directions side by side):

    # T steps, B batch, D directions (1, or 2 when bidirectional), H hidden,
    # P recurrent width (H, or LSTM proj_size), G gates (RNN 1, GRU 3, LSTM 4)
    gx      [T, B, D, G*H]   input projection x @ W_ihᵀ (+ folded biases) for every step
    w_hh    [D, G*H, P]      recurrent weights, one matrix per direction
    h0, c0  [D, B, P], [D, B, H]   initial states (None: zeros)
    lengths [B] int64        valid steps of each sequence (None: all T)
    y       [T, B, D, P]     hidden state of every step, zero past a sequence's length

Direction 1 runs backwards in time. With `lengths`, a step t >= lengths[b] leaves that sequence's
state unchanged and writes zeros to every per-step output, so the reverse direction starts at each
sequence's own last step, as `torch.nn` does with a `PackedSequence`.

`record=True` in a backward also returns the total gradient of every step's state, dL/dh_t
(and dL/dc_t for the LSTM): the direct gradient from y_t plus what flows back from step t+1.

`precision` ("ieee" or "tf32") is that of the fp32 recurrent products: on CUDA, torch's matmuls
run in it for the call; a CPU has no TF32 and computes IEEE fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch

from kernels._contract import check_shapes


class RNNForward(NamedTuple):
    y: torch.Tensor  # [T, B, D, H]; backward needs only y
    h_n: torch.Tensor  # [D, B, H]


class RNNBackward(NamedTuple):
    dgx: torch.Tensor  # [T, B, D, H], gradient of the pre-activation (= of gx)
    dh0: torch.Tensor  # [D, B, H]
    dh_steps: torch.Tensor | None  # [T, B, D, H] float32, with record=True


class LSTMForward(NamedTuple):
    y: torch.Tensor  # [T, B, D, P]
    h_n: torch.Tensor  # [D, B, P]
    c_n: torch.Tensor  # [D, B, H]
    gates: torch.Tensor | None  # [T, B, D, 4H] activated i, f, g, o; None when not training
    c_steps: torch.Tensor | None  # [T, B, D, H] cell state after each step


class LSTMBackward(NamedTuple):
    dgx: torch.Tensor  # [T, B, D, 4H], gradient of the gate pre-activations
    dh0: torch.Tensor  # [D, B, P]
    dc0: torch.Tensor  # [D, B, H]
    dh_steps: torch.Tensor | None  # [T, B, D, P] float32, with record=True or w_hr
    dc_steps: torch.Tensor | None  # [T, B, D, H] float32, with record=True


class GRUForward(NamedTuple):
    y: torch.Tensor  # [T, B, D, H]
    h_n: torch.Tensor  # [D, B, H]
    gates: torch.Tensor | None  # [T, B, D, 3H] activated r, z, n
    ghn: torch.Tensor | None  # [T, B, D, H] W_hn h + b_hn, what the reset gate multiplied


class GRUBackward(NamedTuple):
    dgx: torch.Tensor  # [T, B, D, 3H], gradient of gx
    dghn: torch.Tensor  # [T, B, D, H], gradient of W_hn h + b_hn (the hidden side's n block)
    dh0: torch.Tensor  # [D, B, H]
    dh_steps: torch.Tensor | None  # [T, B, D, H] float32, with record=True


def check_precision(precision: str) -> str:
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"precision: expected 'ieee' or 'tf32', got {precision!r}")
    return precision


@contextlib.contextmanager
def fp32_products(precision: str, device: torch.device) -> Iterator[None]:
    """Inside the block, torch's fp32 matmuls on ``device`` run in ``precision``: "ieee" or "tf32"
    (CUDA only: the CPU has no TF32). The previous setting comes back after."""
    check_precision(precision)
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    # torch >= 2.9 has fp32_precision (mixing it with the older allow_tf32 is refused there)
    new_api = hasattr(matmul, "fp32_precision")
    name, value = ("fp32_precision", precision) if new_api else ("allow_tf32", precision == "tf32")
    previous = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the math runs in: float64 for float64 storage, float32 for everything else."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def previous_states(
    steps: torch.Tensor, init: torch.Tensor | None, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """The state that entered every step, from the per-step states that a forward wrote.

    Args:
        steps: [T, B, D, X] state after each step (zero past a sequence's length).
        init: [D, B, X] initial state, or None for zeros.
        lengths: [B] valid steps per sequence, or None.

    Returns:
        [T, B, D, X]: for direction 0, ``steps[t-1]`` (``init`` at t = 0); for direction 1,
        ``steps[t+1]`` (``init`` at each sequence's last step). Values at steps past a
        sequence's length are unspecified: the gradients there are zero.

    Example:
        >>> h_prev = previous_states(y, h0, lengths)  # dW_hh = Σ_t dgatesᵀ h_prev
    """
    T, B, D, X = steps.shape
    init = steps.new_zeros(D, B, X) if init is None else init.to(steps.dtype)
    forward = torch.cat((init[0][None], steps[:-1, :, 0]))  # [T, B, X]
    if D == 1:
        return forward.unsqueeze(2)
    backward = torch.cat((steps[1:, :, 1], init[1][None]))
    if lengths is not None:  # the reverse direction starts at each sequence's own last step
        last = torch.arange(T, device=steps.device)[:, None] == (lengths - 1)[None, :]  # [T, B]
        backward = torch.where(last[..., None], init[1][None], backward)
    return torch.stack((forward, backward), dim=2)


def _steps(T: int, d: int) -> range:
    # the order direction d visits the steps in
    return range(T) if d == 0 else range(T - 1, -1, -1)


def _valid(lengths: torch.Tensor | None, t: int) -> torch.Tensor | None:
    # [B, 1] bool: whether step t is a real step of each sequence (None: all are)
    return None if lengths is None else (t < lengths)[:, None]


def _where(valid: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor | float) -> torch.Tensor:
    # a step past a sequence's length keeps the old state (or writes the fill value)
    return new if valid is None else torch.where(valid, new, old)


def _state(x: torch.Tensor | None, d: int, shape: tuple[int, int], like: torch.Tensor, ct) -> torch.Tensor:
    # direction d's [B, X] initial state (or final-state gradient), zeros for None
    return like.new_zeros(shape, dtype=ct) if x is None else x[d].to(ct)


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
    """Elman RNN forward: h_t = act(gx_t + W_hh h_{t-1}), act = tanh or relu.

    Args:
        gx: [T, B, D, H] input projection with both biases folded in.
        w_hh: [D, H, H]. h0: [D, B, H] or None. lengths: [B] or None.
        nonlinearity: "tanh" or "relu".
        training: unused (backward needs only y); kept for a uniform signature.

    Returns:
        RNNForward(y [T, B, D, H], h_n [D, B, H]) in gx's dtype.
    """
    check_shapes("rnn_fwd", nonlinearity, gx=gx, w_hh=w_hh, h0=h0, lengths=lengths)
    T, B, D, H = gx.shape
    ct = compute_dtype(gx)
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    y = gx.new_zeros(T, B, D, H, dtype=ct)
    h_n = gx.new_zeros(D, B, H, dtype=ct)
    with fp32_products(precision, gx.device):
        for d in range(D):
            w = w_hh[d].to(ct)
            h = _state(h0, d, (B, H), gx, ct)
            for t in _steps(T, d):
                v = _valid(lengths, t)
                h_new = act(gx[t, :, d].to(ct) + h @ w.T)
                y[t, :, d] = _where(v, h_new, 0.0)
                h = _where(v, h_new, h)
            h_n[d] = h
    return RNNForward(y.to(gx.dtype), h_n.to(gx.dtype))


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
    """Elman RNN backward through time.

    Args:
        dy: [T, B, D, H] gradient of y, or None. dh_n: [D, B, H] or None.
        y: [T, B, D, H] from the forward. w_hh: [D, H, H]. lengths: [B] or None.
        record: also return dL/dh_t for every step.

    Returns:
        RNNBackward(dgx [T, B, D, H], dh0 [D, B, H], dh_steps [T, B, D, H] float32 or None).
    """
    check_shapes("rnn_bwd", nonlinearity, dy=dy, dh_n=dh_n, y=y, w_hh=w_hh, lengths=lengths)
    T, B, D, H = y.shape
    ct = compute_dtype(y)
    dgx = y.new_zeros(T, B, D, H, dtype=ct)
    dh0 = y.new_zeros(D, B, H, dtype=ct)
    dh_steps = y.new_zeros(T, B, D, H, dtype=ct) if record else None
    with fp32_products(precision, y.device):
        for d in range(D):
            w = w_hh[d].to(ct)
            dh = _state(dh_n, d, (B, H), y, ct)  # the gradient flowing into step t from t + 1
            for t in reversed(_steps(T, d)):
                v = _valid(lengths, t)
                dh_total = dh if dy is None else dh + dy[t, :, d].to(ct)
                h = y[t, :, d].to(ct)
                derivative = 1 - h * h if nonlinearity == "tanh" else (h > 0).to(ct)
                dpre = _where(v, dh_total * derivative, 0.0)
                dgx[t, :, d] = dpre
                if dh_steps is not None:
                    dh_steps[t, :, d] = _where(v, dh_total, 0.0)
                dh = _where(v, dpre @ w, dh)
            dh0[d] = dh
    return RNNBackward(dgx.to(y.dtype), dh0.to(y.dtype), dh_steps)


def lstm_fwd(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    w_hr: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    *,
    training: bool = True,
    zoneout: float = 0.0,
    precision: str = "ieee",
) -> LSTMForward:
    """LSTM forward (gate order i, f, g, o as torch.nn), with optional projection.

    c_t = f' ⊙ c_{t-1} + i' ⊙ g,  h_t = o ⊙ tanh(c_t)  (or W_hr (o ⊙ tanh(c_t)) with w_hr), where
    i' = (1 - zoneout) i and f' = zoneout + (1 - zoneout) f: cell zoneout's expectation at inference
    (`rnnkit.zoneout`); with zoneout 0, i and f themselves.

    Args:
        gx: [T, B, D, 4H] input projection with both biases folded in.
        w_hh: [D, 4H, P]. h0: [D, B, P] or None. c0: [D, B, H] or None.
        w_hr: [D, P, H] projection (torch.nn's proj_size) or None. lengths: [B] or None.
        training: save the gates and cell states for backward; False saves nothing.
        zoneout: cell zoneout's probability p in [0, 1].

    Returns:
        LSTMForward(y [T, B, D, P], h_n [D, B, P], c_n [D, B, H],
        gates [T, B, D, 4H] (σ, σ, tanh, σ of the pre-activations) or None, c_steps [T, B, D, H] or
        None), in gx's dtype.
    """
    check_shapes("lstm_fwd", gx=gx, w_hh=w_hh, h0=h0, c0=c0, w_hr=w_hr, lengths=lengths)
    T, B, D, G = gx.shape
    H, P = G // 4, w_hh.shape[2]
    ct = compute_dtype(gx)
    y = gx.new_zeros(T, B, D, P, dtype=ct)
    gates = gx.new_zeros(T, B, D, G, dtype=ct)
    c_steps = gx.new_zeros(T, B, D, H, dtype=ct)
    h_n, c_n = gx.new_zeros(D, B, P, dtype=ct), gx.new_zeros(D, B, H, dtype=ct)
    with fp32_products(precision, gx.device):
        for d in range(D):
            w = w_hh[d].to(ct)
            h, c = _state(h0, d, (B, P), gx, ct), _state(c0, d, (B, H), gx, ct)
            for t in _steps(T, d):
                v = _valid(lengths, t)
                i, f, g, o = (gx[t, :, d].to(ct) + h @ w.T).chunk(4, dim=-1)
                i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
                c_new = (zoneout + (1 - zoneout) * f) * c + (1 - zoneout) * i * g
                h_new = o * torch.tanh(c_new)
                if w_hr is not None:
                    h_new = h_new @ w_hr[d].to(ct).T
                y[t, :, d] = _where(v, h_new, 0.0)
                gates[t, :, d] = _where(v, torch.cat((i, f, g, o), dim=-1), 0.0)
                c_steps[t, :, d] = _where(v, c_new, 0.0)
                h, c = _where(v, h_new, h), _where(v, c_new, c)
            h_n[d], c_n[d] = h, c
    dtype = gx.dtype
    saved = (gates.to(dtype), c_steps.to(dtype)) if training else (None, None)
    return LSTMForward(y.to(dtype), h_n.to(dtype), c_n.to(dtype), *saved)


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
    zoneout: float = 0.0,
    precision: str = "ieee",
) -> LSTMBackward:
    """LSTM backward through time.

    Args:
        dy: [T, B, D, P] or None. dh_n: [D, B, P] or None. dc_n: [D, B, H] or None.
        w_hh: [D, 4H, P]. w_hr: [D, P, H] or None. c0: [D, B, H] or None.
        gates, c_steps: what lstm_fwd saved. lengths: [B] or None.
        record: also return dL/dh_t and dL/dc_t for every step. zoneout: the forward's.

    Returns:
        LSTMBackward(dgx [T, B, D, 4H], dh0 [D, B, P], dc0 [D, B, H], dh_steps, dc_steps).
        dh_steps [T, B, D, P] float32 comes with record=True and always with w_hr (the
        projection's weight gradient needs it); dc_steps [T, B, D, H] float32 with record=True.
    """
    check_shapes(
        "lstm_bwd",
        dy=dy,
        dh_n=dh_n,
        dc_n=dc_n,
        w_hh=w_hh,
        w_hr=w_hr,
        c0=c0,
        gates=gates,
        c_steps=c_steps,
        lengths=lengths,
    )
    T, B, D, G = gates.shape
    H, P = G // 4, w_hh.shape[2]
    ct = compute_dtype(gates)
    c_prev = previous_states(c_steps.to(ct), c0, lengths)  # [T, B, D, H] c_{t-1}
    dgx = gates.new_zeros(T, B, D, G, dtype=ct)
    dh0, dc0 = gates.new_zeros(D, B, P, dtype=ct), gates.new_zeros(D, B, H, dtype=ct)
    dh_steps = gates.new_zeros(T, B, D, P, dtype=ct) if record or w_hr is not None else None
    dc_steps = gates.new_zeros(T, B, D, H, dtype=ct) if record else None
    with fp32_products(precision, gates.device):
        for d in range(D):
            w = w_hh[d].to(ct)
            dh, dc = _state(dh_n, d, (B, P), gates, ct), _state(dc_n, d, (B, H), gates, ct)
            for t in reversed(_steps(T, d)):
                v = _valid(lengths, t)
                i, f, g, o = gates[t, :, d].to(ct).chunk(4, dim=-1)
                tanh_c = torch.tanh(c_steps[t, :, d].to(ct))
                dh_total = dh if dy is None else dh + dy[t, :, d].to(ct)
                dm = dh_total if w_hr is None else dh_total @ w_hr[d].to(ct)  # of o ⊙ tanh c
                dc_total = dc + dm * o * (1 - tanh_c * tanh_c)
                dc_kept = (1 - zoneout) * dc_total  # of i' and f' through i and f
                di = dc_kept * g * i * (1 - i)
                df = dc_kept * c_prev[t, :, d] * f * (1 - f)
                dg = dc_kept * i * (1 - g * g)
                do = dm * tanh_c * o * (1 - o)
                dpre = _where(v, torch.cat((di, df, dg, do), dim=-1), 0.0)
                dgx[t, :, d] = dpre
                if dh_steps is not None:
                    dh_steps[t, :, d] = _where(v, dh_total, 0.0)
                if dc_steps is not None:
                    dc_steps[t, :, d] = _where(v, dc_total, 0.0)
                dh = _where(v, dpre @ w, dh)
                dc = _where(v, dc_total * (zoneout + (1 - zoneout) * f), dc)
            dh0[d], dc0[d] = dh, dc
    dtype = gates.dtype
    return LSTMBackward(dgx.to(dtype), dh0.to(dtype), dc0.to(dtype), dh_steps, dc_steps)


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
    """GRU forward (gate order r, z, n as torch.nn).

    r = σ(gx_r + W_hr h), z = σ(gx_z + W_hz h), n = tanh(gx_n + r ⊙ (W_hn h + b_hn)),
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}.

    Args:
        gx: [T, B, D, 3H] input projection; b_ih folded in, and b_hh's r and z blocks.
        w_hh: [D, 3H, H]. b_hn: [D, H] (b_hh's n block, inside the reset) or None.
        h0: [D, B, H] or None. lengths: [B] or None.
        training: save the gates for backward; False saves nothing.

    Returns:
        GRUForward(y [T, B, D, H], h_n [D, B, H], gates [T, B, D, 3H] or None,
        ghn [T, B, D, H] or None), in gx's dtype.
    """
    check_shapes("gru_fwd", gx=gx, w_hh=w_hh, b_hn=b_hn, h0=h0, lengths=lengths)
    T, B, D, G = gx.shape
    H = G // 3
    ct = compute_dtype(gx)
    y, h_n = gx.new_zeros(T, B, D, H, dtype=ct), gx.new_zeros(D, B, H, dtype=ct)
    gates, ghn = gx.new_zeros(T, B, D, G, dtype=ct), gx.new_zeros(T, B, D, H, dtype=ct)
    with fp32_products(precision, gx.device):
        for d in range(D):
            w = w_hh[d].to(ct)
            h = _state(h0, d, (B, H), gx, ct)
            for t in _steps(T, d):
                v = _valid(lengths, t)
                x_r, x_z, x_n = gx[t, :, d].to(ct).chunk(3, dim=-1)
                h_r, h_z, h_n_pre = (h @ w.T).chunk(3, dim=-1)
                if b_hn is not None:
                    h_n_pre = h_n_pre + b_hn[d].to(ct)
                r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
                n = torch.tanh(x_n + r * h_n_pre)
                h_new = n + z * (h - n)
                y[t, :, d] = _where(v, h_new, 0.0)
                gates[t, :, d] = _where(v, torch.cat((r, z, n), dim=-1), 0.0)
                ghn[t, :, d] = _where(v, h_n_pre, 0.0)
                h = _where(v, h_new, h)
            h_n[d] = h
    dtype = gx.dtype
    saved = (gates.to(dtype), ghn.to(dtype)) if training else (None, None)
    return GRUForward(y.to(dtype), h_n.to(dtype), *saved)


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
    """GRU backward through time.

    Args:
        dy: [T, B, D, H] or None. dh_n: [D, B, H] or None. w_hh: [D, 3H, H].
        h0: [D, B, H] or None. y, gates, ghn: what gru_fwd returned. lengths: [B] or None.
        record: also return dL/dh_t for every step.

    Returns:
        GRUBackward(dgx [T, B, D, 3H], dghn [T, B, D, H], dh0 [D, B, H],
        dh_steps [T, B, D, H] float32 or None). The hidden side's gate gradient is
        (dgx_r, dgx_z, dghn): dW_hh and db_hh come from it.
    """
    check_shapes("gru_bwd", dy=dy, dh_n=dh_n, w_hh=w_hh, h0=h0, y=y, gates=gates, ghn=ghn, lengths=lengths)
    T, B, D, G = gates.shape
    H = G // 3
    ct = compute_dtype(gates)
    h_prev = previous_states(y.to(ct), h0, lengths)  # [T, B, D, H] h_{t-1}
    dgx, dghn = gates.new_zeros(T, B, D, G, dtype=ct), gates.new_zeros(T, B, D, H, dtype=ct)
    dh0 = gates.new_zeros(D, B, H, dtype=ct)
    dh_steps = gates.new_zeros(T, B, D, H, dtype=ct) if record else None
    with fp32_products(precision, gates.device):
        for d in range(D):
            w = w_hh[d].to(ct)
            dh = _state(dh_n, d, (B, H), gates, ct)
            for t in reversed(_steps(T, d)):
                v = _valid(lengths, t)
                r, z, n = gates[t, :, d].to(ct).chunk(3, dim=-1)
                dh_total = dh if dy is None else dh + dy[t, :, d].to(ct)
                dn = dh_total * (1 - z) * (1 - n * n)
                dr = dn * ghn[t, :, d].to(ct) * r * (1 - r)
                dz = dh_total * (h_prev[t, :, d] - n) * z * (1 - z)
                d_ghn = _where(v, dn * r, 0.0)
                d_gx = _where(v, torch.cat((dr, dz, dn), dim=-1), 0.0)
                dgx[t, :, d], dghn[t, :, d] = d_gx, d_ghn
                if dh_steps is not None:
                    dh_steps[t, :, d] = _where(v, dh_total, 0.0)
                d_hidden = torch.cat((d_gx[:, : 2 * H], d_ghn), dim=-1)  # of h @ W_hhᵀ (+ b_hn)
                dh = _where(v, dh_total * z + d_hidden @ w, dh)
            dh0[d] = dh
    dtype = gates.dtype
    return GRUBackward(dgx.to(dtype), dghn.to(dtype), dh0.to(dtype), dh_steps)
