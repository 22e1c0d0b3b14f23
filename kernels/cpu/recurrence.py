"""The CPU backend's six functions: `kernels.reference`'s signatures and results, made fast.

What makes them fast, each measured in docs/cpu-backend.md:
- both directions in one batched step ([T, D, B, X] "processing order", direction 1 reversed);
- the recurrent products on oneDNN where it beats MKL (`_onednn.RowProducts`), the weight reordered
  once per call;
- the LSTM step's elementwise work in one compiled C pass (`_step`), forward and backward;
- per-step buffers from a pool of huge-page buffers (`_memory`);
- the LSTM backward in chunks of steps that stay in cache, its dgx written gate-major ([D, 4H, T, B]
  viewed as [T, B, D, 4H]), so that the weight gradients' products read it as it lies;
- denormals flushed to zero on the calling thread (`flush_denormals`).

Layout and semantics are the reference's; the tests hold every output and gradient to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from kernels._contract import check_shapes
from kernels.cpu import _memory
from kernels.cpu import _step as _cpu_step
from kernels.cpu._onednn import RowProducts
from kernels.reference import (
    GRUBackward,
    GRUForward,
    LSTMBackward,
    LSTMForward,
    RNNBackward,
    RNNForward,
    check_precision,
    compute_dtype,
)

# a denormal times one: zero where the calling thread flushes denormals (its SSE state, which
# Python's float arithmetic shares); module globals, so that the compiler does not fold the product
_TINY, _ONE = 5e-324, 1.0


@contextlib.contextmanager
def flush_denormals(device: torch.device) -> Iterator[None]:
    """Inside the block, the calling thread flushes denormal floats to zero on the CPU (FTZ and DAZ,
    `torch.set_flush_denormal`); the previous mode comes back after. Elsewhere it does nothing.

    A gradient that decays through hundreds of steps falls below float32's smallest normal number
    (1.2e-38), and an Intel Xeon computes with such numbers many times slower: one thread, T 784,
    B 128, H 128, the LSTM's backward took 4.4 s with denormals and 0.58 s flushed (forward 0.4 s
    either way). Numbers that small change no sum they enter; a GPU's fused kernels flush them too.
    Only the calling thread: torch's worker threads keep the mode they were created with (the CLI
    sets it at its start, so that they inherit it).
    """
    if device.type != "cpu" or _TINY * _ONE == 0.0:  # not the CPU, or flushing already
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def _cpu_math(precision: str, device: torch.device) -> Iterator[None]:
    # what every forward and backward here runs in: its products' precision, denormals flushed
    check_precision(precision)  # a CPU has no TF32: both are IEEE fp32 here
    with flush_denormals(device):
        yield


def _processing_order(x: torch.Tensor) -> torch.Tensor:
    # [T, B, D, X] -> [T, D, B, X] with direction 1 reversed in time: step s of the loop is row s
    xp = x.permute(0, 2, 1, 3)
    if xp.shape[1] == 2:
        xp = torch.stack((xp[:, 0], xp[:, 1].flip(0)), dim=1)
    return xp.contiguous()


def _time_order(xp: torch.Tensor) -> torch.Tensor:
    # inverse of _processing_order: [T, D, B, X] -> [T, B, D, X]
    if xp.shape[1] == 2:
        xp = torch.stack((xp[:, 0], xp[:, 1].flip(0)), dim=1)
    return xp.permute(0, 2, 1, 3).contiguous()


def _valid_steps(lengths: torch.Tensor | None, T: int, D: int) -> torch.Tensor | None:
    # [T, D, B, 1] bool in processing order: loop step s of direction d is a real step
    if lengths is None:
        return None
    s = torch.arange(T, device=lengths.device)
    t_of_step = torch.stack((s, T - 1 - s), dim=1)[:, :D]  # [T, D]
    return (t_of_step[:, :, None] < lengths[None, None, :])[..., None]


def _first_steps(
    lengths: torch.Tensor | None, T: int, D: int, B: int, device, a: int = 0, b: int | None = None
) -> torch.Tensor:
    # [b - a, D, B, 1] bool in processing order: whether loop step s (a <= s < b, default all T) is
    # where each sequence starts
    s = torch.arange(a, T if b is None else b, device=device)[:, None, None, None]
    first = torch.zeros(D, B, device=device, dtype=torch.long)
    if D == 2:
        first[1] = 0 if lengths is None else T - lengths
    return s == first[None, :, :, None]


def _previous_p(
    state_p: torch.Tensor, init: torch.Tensor, lengths: torch.Tensor | None, a: int = 0, b: int | None = None
):
    # [T, D, B, X] processing order -> the state entering loop steps a..b-1 (default all T; init at
    # a sequence's start)
    T, D, B, _ = state_p.shape
    b = T if b is None else b
    init = init[None].to(state_p.dtype)
    prev = state_p[a - 1 : b - 1] if a > 0 else torch.cat((init, state_p[: b - 1]), dim=0)
    if D == 2 and lengths is not None:
        prev = torch.where(_first_steps(lengths, T, D, B, state_p.device, a, b), init, prev)
    return prev


def _keep(new: torch.Tensor, old: torch.Tensor | float, valid: torch.Tensor | None):
    # a masked step keeps the old state (or writes the given fill value)
    return new if valid is None else torch.where(valid, new, old)


def _init_state(x: torch.Tensor | None, shape, like: torch.Tensor, dtype) -> torch.Tensor:
    return like.new_zeros(shape, dtype=dtype) if x is None else x.to(dtype)


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
    """`kernels.reference.rnn_fwd`, on the CPU."""
    check_shapes("rnn_fwd", nonlinearity, gx=gx, w_hh=w_hh, h0=h0, lengths=lengths)
    with _cpu_math(precision, gx.device):
        T, B, D, H = gx.shape
        ct = compute_dtype(gx)
        act = torch.tanh if nonlinearity == "tanh" else torch.relu
        gxp = _processing_order(gx).to(ct)  # [T, D, B, H]
        recurrent = RowProducts(w_hh.to(ct), B)  # h @ W_hhᵀ
        h = _init_state(h0, (D, B, H), gx, ct)  # [D, B, H]
        valid = _valid_steps(lengths, T, D)
        yp = _memory.empty(gx, T, D, B, H)
        for s in range(T):
            v = None if valid is None else valid[s]
            h_new = act(recurrent(h, gxp[s]))
            yp[s] = _keep(h_new, 0.0, v)
            h = _keep(h_new, h, v)
        return RNNForward(_time_order(yp), h.to(gx.dtype, copy=True))


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
    """`kernels.reference.rnn_bwd`, on the CPU."""
    check_shapes("rnn_bwd", nonlinearity, dy=dy, dh_n=dh_n, y=y, w_hh=w_hh, lengths=lengths)
    with _cpu_math(precision, y.device):
        T, B, D, H = y.shape
        ct = compute_dtype(y)
        yp = _processing_order(y).to(ct)
        dyp = None if dy is None else _processing_order(dy).to(ct)
        back = RowProducts(w_hh.to(ct).transpose(1, 2), B)  # δa @ W_hh
        dh = _init_state(dh_n, (D, B, H), y, ct)  # gradient carried into the step being processed
        valid = _valid_steps(lengths, T, D)
        dgp = _memory.empty(y, T, D, B, H)
        recp = _memory.empty(y, T, D, B, H, dtype=ct) if record else None
        for s in reversed(range(T)):
            v = None if valid is None else valid[s]
            if recp is not None:  # δh_t made in its record row: the record costs no extra pass
                dh_total = recp[s].copy_(dh) if dyp is None else torch.add(dh, dyp[s], out=recp[s])
            else:
                dh_total = dh if dyp is None else dh + dyp[s]
            h = yp[s]
            dpre = _keep(dh_total * (1 - h * h if nonlinearity == "tanh" else h > 0), 0.0, v)
            dgp[s] = dpre
            if recp is not None and v is not None:
                recp[s].masked_fill_(~v, 0.0)  # after dpre read it: the record is 0 past a length
            dh = _keep(back(dpre), dh, v)
        dh_steps = None if recp is None else _time_order(recp)
        return RNNBackward(_time_order(dgp), dh.to(y.dtype, copy=True), dh_steps)


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
    """`kernels.reference.lstm_fwd`, on the CPU."""
    check_shapes("lstm_fwd", gx=gx, w_hh=w_hh, h0=h0, c0=c0, w_hr=w_hr, lengths=lengths)
    with _cpu_math(precision, gx.device):
        T, B, D, G = gx.shape
        H, P = G // 4, w_hh.shape[2]
        ct = compute_dtype(gx)
        gxp = _processing_order(gx).to(ct)  # [T, D, B, 4H]
        recurrent = RowProducts(w_hh.to(ct), B)  # h @ W_hhᵀ: [D, B, 4H]
        projection = None if w_hr is None else RowProducts(w_hr.to(ct), B)  # m @ W_hrᵀ: [D, B, P]
        h = _init_state(h0, (D, B, P), gx, ct)
        c = _init_state(c0, (D, B, H), gx, ct)
        valid = _valid_steps(lengths, T, D)
        yp = _memory.empty(gx, T, D, B, P, dtype=ct)
        # the loop writes the gates and c_t of every step in place (two scratch rows without training)
        gates_p = _memory.empty(gx, T if training else 2, D, B, G, dtype=ct)
        c_p = _memory.empty(gx, T if training else 2, D, B, H, dtype=ct)
        # the step's elementwise work in one C pass where it can (no projection, fp32 on the CPU)
        # (zoneout's expectation: at inference, where its applied gates are scratch, and no lengths)
        plain = projection is None and (zoneout == 0 or (not training and valid is None))
        step = _cpu_step.lstm_step(D * B, H, gxp, h, c) if plain else None
        if step is not None:
            h, c = step.forward(recurrent, gxp, h, c, valid, yp, gates_p, c_p, keep=zoneout)
        for s in range(T if step is None else 0):
            v = None if valid is None else valid[s]
            gates, c_new = gates_p[s % len(gates_p)], c_p[s % len(c_p)]
            pre = recurrent(h, gxp[s])  # [D, B, 4H]
            torch.sigmoid(pre, out=gates)
            torch.tanh(pre[..., 2 * H : 3 * H], out=gates[..., 2 * H : 3 * H])
            i, f, g, o = gates.chunk(4, dim=-1)
            if zoneout:  # the expectation's gates i' = (1 - p) i, f' = p + (1 - p) f
                i, f = (1 - zoneout) * i, f * (1 - zoneout) + zoneout
            torch.mul(f, c, out=c_new)
            c_new.addcmul_(i, g)
            direct = projection is None and v is None  # h_t straight into the output: no copy
            h_new = torch.mul(o, torch.tanh(c_new), out=yp[s] if direct else None)
            if projection is not None:
                h_new = projection(h_new)
            if v is None:
                if not direct:
                    yp[s] = h_new
                h, c = h_new, c_new
                continue
            yp[s] = torch.where(v, h_new, 0.0)
            h, c = torch.where(v, h_new, h), torch.where(v, c_new, c)
            if training:
                gates.masked_fill_(~v, 0.0)
                c_new.masked_fill_(~v, 0.0)
        dtype = gx.dtype
        return LSTMForward(
            _time_order(yp).to(dtype),
            h.to(dtype, copy=True),
            c.to(dtype, copy=True),
            _time_order(gates_p).to(dtype) if training else None,
            _time_order(c_p).to(dtype) if training else None,
        )


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
    """`kernels.reference.lstm_bwd`, on the CPU. dgx has gate-major strides (a view of the dense
    [D, 4H, T, B] it was written in): the weight gradients contract T·B and read it as it lies."""
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
    with _cpu_math(precision, gates.device):
        T, B, D, G = gates.shape
        H, P = G // 4, w_hh.shape[2]
        ct = compute_dtype(gates)
        gates_p = _processing_order(gates).to(ct)  # [T, D, B, 4H]
        i, f, g, o = gates_p.chunk(4, dim=-1)  # [T, D, B, H] each
        c_p = _processing_order(c_steps).to(ct)
        c_init = _init_state(c0, (D, B, H), gates, ct)
        dyp = None if dy is None else _processing_order(dy).to(ct)
        back = RowProducts(w_hh.to(ct).transpose(1, 2), B)  # δa @ W_hh: [D, B, P]
        back_r = None if w_hr is None else RowProducts(w_hr.to(ct).transpose(1, 2), B)  # δh @ W_hr
        dh = _init_state(dh_n, (D, B, P), gates, ct)
        dc = _init_state(dc_n, (D, B, H), gates, ct)
        valid = _valid_steps(lengths, T, D)
        # δa of every step, gate-major ([D, 4H, T, B], time order): dW_hh and dW_ih contract T·B,
        # and oneDNN's product wants that dimension last (2x MKL's speed on the CPU); the step's
        # own δa [D, B, 4H] is scratch for the recurrent product
        dgm = _memory.empty(gates, D, G, T, B, dtype=ct)
        K = _chunk_steps(D * B * H, T)
        chunk = gates.new_empty(K, D, B, G, dtype=ct)  # the chunk's δa, step-major, then transposed
        rec_h = _memory.empty(gates, T, D, B, P, dtype=ct) if record or w_hr is not None else None
        rec_c = _memory.empty(gates, T, D, B, H, dtype=ct) if record else None
        # the step's elementwise work in one C pass where it can (no projection, fp32 on the CPU)
        # (it needs no factors: only the chunk's c_{t-1})
        plain = back_r is None and zoneout == 0
        step = _cpu_step.lstm_step(D * B, H, gates_p, c_p, dh) if plain else None
        carry = f if zoneout == 0 else f * (1 - zoneout) + zoneout  # δc_{t-1} = δc_t ⊙ f'
        kept = 1 - zoneout  # i', f' = (1 - p) i, p + (1 - p) f: their pre-activations' share
        if step is not None:  # dense; dc is carried back in place, in a copy
            dh, dc = dh.contiguous(), torch.clone(dc, memory_format=torch.contiguous_format)
        for a in reversed(range(0, T, K)):
            b = min(a + K, T)
            if step is not None:
                c_prev = _previous_p(c_p, c_init, lengths, a, b).contiguous()
                dh = step.backward(back, a, b, gates_p, c_p, c_prev, dh, dyp, valid, dc, chunk, rec_h, rec_c)
                step.to_gate_major(dgm, chunk, a, b - a)
                continue
            # what does not depend on the recurrence, for steps a..b-1 at once: a chunk small enough
            # to stay in cache while the steps read it (whole-sequence tensors made these passes
            # memory-bound: 63% of the backward at T 784, B 128, H 128)
            c_prev = _previous_p(c_p, c_init, lengths, a, b)
            to_c, factors = _lstm_factors(i[a:b], f[a:b], g[a:b], o[a:b], c_p[a:b], c_prev)
            if zoneout:
                factors[:, :, :, :3] *= kept
            for s in reversed(range(a, b)):
                k = s - a
                v = None if valid is None else valid[s]
                dh_total = dh if dyp is None else dh + dyp[s]
                dm = dh_total if back_r is None else back_r(dh_total)  # [D, B, H]
                dc_total = torch.addcmul(dc, dm, to_c[k])
                dpre = chunk[k]  # [D, B, 4H]
                gates_s = dpre.view(D, B, 4, H)  # δa_{i,f,g} = δc ⊙ factor, δa_o = δm ⊙ factor, in place
                torch.mul(factors[k, :, :, :3], dc_total.unsqueeze(2), out=gates_s[:, :, :3])
                torch.mul(factors[k, :, :, 3], dm, out=gates_s[:, :, 3])
                if rec_h is not None:
                    rec_h[s] = _keep(dh_total, 0.0, v)
                if rec_c is not None:
                    rec_c[s] = _keep(dc_total, 0.0, v)
                if v is not None:
                    dpre.masked_fill_(~v, 0.0)
                dh = _keep(back(dpre), dh, v)
                dc = _keep(dc_total * carry[s], dc, v)
            _to_gate_major(dgm, chunk[: b - a], a)
        return LSTMBackward(
            dgm.permute(2, 3, 0, 1).to(gates.dtype),  # [T, B, D, 4H] with gate-major strides
            dh.to(gates.dtype, copy=True),
            dc.to(gates.dtype, copy=True),
            None if rec_h is None else _time_order(rec_h),
            None if rec_c is None else _time_order(rec_c),
        )


def _to_gate_major(dgm: torch.Tensor, chunk: torch.Tensor, a: int) -> None:
    # chunk [K, D, B, G] (loop steps a..a+K-1) into dgm [D, G, T, B] (time order): per direction one
    # 2-D transpose into a contiguous [G, K·B] (torch's blocked transpose; a strided copy straight
    # into dgm ran 2-3x slower) and one copy of whole rows
    K, D, B, G = chunk.shape
    T = dgm.shape[2]
    for d in range(D):
        rows = chunk[:, d].reshape(K * B, G).T.contiguous().view(G, K, B)
        if d == 0:
            dgm[0, :, a : a + K].copy_(rows)
        else:  # loop step s of the reverse direction is time T - 1 - s
            dgm[1, :, T - a - K : T - a].copy_(rows.flip(1))


# elements of one [steps, D, B, H] tensor in a chunk of the LSTM backward's steps: the chunk's
# tensors (four factors, to_c, c_{t-1}, tanh c, its 4H-wide δa) then take about 2 MiB in fp32. One
# thread, backward alone: T 784 B 128 H 128 229 ms (2^18: 275, whole sequence: 829); T 500 B 32
# H 128 56 ms (93); T 100 B 64 H 512 114 ms (201)
STEP_CHUNK_ELEMENTS = 2**16


def _chunk_steps(per_step: int, T: int) -> int:
    return max(1, min(T, STEP_CHUNK_ELEMENTS // max(per_step, 1)))


def _lstm_factors(i, f, g, o, c, c_prev):
    # [K, D, B, H] each -> to_c [K, D, B, H] and factors [K, D, B, 4, H]: zero at masked steps,
    # where the saved gates are zero (x - x·y written as addcmul: one pass instead of two)
    tanh_c = torch.tanh(c)
    to_c = torch.addcmul(o, o * tanh_c, tanh_c, value=-1)  # o (1 - tanh² c): δc_t = carried + δm_t ⊙ to_c
    K, D, B, H = c.shape
    factors = c.new_empty(K, D, B, 4, H)  # δa_{i,f,g} = δc_t ⊙ factor, δa_o = δm_t ⊙ factor
    torch.mul(g, torch.addcmul(i, i, i, value=-1), out=factors[:, :, :, 0])  # g i (1 - i)
    torch.mul(c_prev, torch.addcmul(f, f, f, value=-1), out=factors[:, :, :, 1])  # c_{t-1} f (1 - f)
    torch.addcmul(i, i * g, g, value=-1, out=factors[:, :, :, 2])  # i (1 - g²)
    torch.mul(tanh_c, torch.addcmul(o, o, o, value=-1), out=factors[:, :, :, 3])  # tanh c o (1 - o)
    return to_c, factors


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
    """`kernels.reference.gru_fwd`, on the CPU."""
    check_shapes("gru_fwd", gx=gx, w_hh=w_hh, b_hn=b_hn, h0=h0, lengths=lengths)
    with _cpu_math(precision, gx.device):
        T, B, D, G = gx.shape
        H = G // 3
        ct = compute_dtype(gx)
        gxp = _processing_order(gx).to(ct)  # [T, D, B, 3H]
        recurrent = RowProducts(w_hh.to(ct), B)  # h @ W_hhᵀ: [D, B, 3H]
        bias_n = None if b_hn is None else b_hn.to(ct)[:, None, :]  # [D, 1, H]
        h = _init_state(h0, (D, B, H), gx, ct)
        valid = _valid_steps(lengths, T, D)
        yp = _memory.empty(gx, T, D, B, H)
        gates_p = _memory.empty(gx, T, D, B, G) if training else None
        ghn_p = _memory.empty(gx, T, D, B, H) if training else None
        for s in range(T):
            v = None if valid is None else valid[s]
            x_r, x_z, x_n = gxp[s].chunk(3, dim=-1)
            h_r, h_z, ghn = recurrent(h).chunk(3, dim=-1)
            if bias_n is not None:
                ghn = ghn + bias_n
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * ghn)
            h_new = n + z * (h - n)
            yp[s] = _keep(h_new, 0.0, v)
            if training:
                gates_p[s] = _keep(torch.cat((r, z, n), dim=-1), 0.0, v)
                ghn_p[s] = _keep(ghn, 0.0, v)
            h = _keep(h_new, h, v)
        return GRUForward(
            _time_order(yp),
            h.to(gx.dtype, copy=True),
            None if gates_p is None else _time_order(gates_p),
            None if ghn_p is None else _time_order(ghn_p),
        )


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
    """`kernels.reference.gru_bwd`, on the CPU."""
    check_shapes("gru_bwd", dy=dy, dh_n=dh_n, w_hh=w_hh, h0=h0, y=y, gates=gates, ghn=ghn, lengths=lengths)
    with _cpu_math(precision, gates.device):
        T, B, D, G = gates.shape
        H = G // 3
        ct = compute_dtype(gates)
        gates_p = _processing_order(gates).to(ct)
        ghn_p = _processing_order(ghn).to(ct)
        h_prev_p = _previous_p(_processing_order(y).to(ct), _init_state(h0, (D, B, H), y, ct), lengths)
        dyp = None if dy is None else _processing_order(dy).to(ct)
        back = RowProducts(w_hh.to(ct).transpose(1, 2), B)  # [δr δz δĥn] @ W_hh
        dh = _init_state(dh_n, (D, B, H), y, ct)
        valid = _valid_steps(lengths, T, D)
        dgx_p = _memory.empty(gates, T, D, B, G)
        dghn_p = _memory.empty(gates, T, D, B, H)
        recp = _memory.empty(gates, T, D, B, H, dtype=ct) if record else None
        for s in reversed(range(T)):
            v = None if valid is None else valid[s]
            r, z, n = gates_p[s].chunk(3, dim=-1)
            dh_total = dh if dyp is None else dh + dyp[s]
            dn_pre = dh_total * (1 - z) * (1 - n * n)
            dr_pre = dn_pre * ghn_p[s] * r * (1 - r)
            dz_pre = dh_total * (h_prev_p[s] - n) * z * (1 - z)
            dghn = _keep(dn_pre * r, 0.0, v)
            dgx = _keep(torch.cat((dr_pre, dz_pre, dn_pre), dim=-1), 0.0, v)
            dgx_p[s] = dgx
            dghn_p[s] = dghn
            if recp is not None:
                recp[s] = _keep(dh_total, 0.0, v)
            dgh = torch.cat((dgx[..., : 2 * H], dghn), dim=-1)
            dh = _keep(dh_total * z + back(dgh), dh, v)
        return GRUBackward(
            _time_order(dgx_p),
            _time_order(dghn_p),
            dh.to(y.dtype, copy=True),
            None if recp is None else _time_order(recp),
        )
