"""The recurrence of one layer (both directions), differentiable, on a chosen backend.

The input projection for all steps is computed beforehand as one matrix product
(``gx = x @ W_ihᵀ + b``); these functions run the time loop. Layout (time-major):

    # T steps, B batch, D directions (1 or 2), H hidden, P recurrent width (H or proj_size)
    gx [T, B, D, G*H]   w_hh [D, G*H, P]   h0 [D, B, P]   c0 [D, B, H]   y [T, B, D, P]

Direction 1 runs backwards in time; with ``lengths`` each sequence stops at its own length
(outputs past it are zero, its state is carried unchanged), and the reverse direction starts at
each sequence's own last step, as `torch.nn` does with a `PackedSequence`.

Precision: the recurrent products of float32 tensors on a GPU use TF32 where torch.nn's recurrent
layers would (`recurrent_precision`); ``precision="ieee"`` or ``"tf32"`` chooses it for one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rnnkit import backends
from rnnkit._checks import check_floating, check_lengths, check_probability, check_tensor
from rnnkit.autograd import StepGradientsHook, StepRecord, no_autocast, recomputing_gx, recording_into
from rnnkit.ops import backend_for, operators_for

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _check_gx(gx: torch.Tensor, cell: str) -> tuple[int, int, int, int]:
    if not isinstance(gx, torch.Tensor):
        raise TypeError(f"gx: expected a torch.Tensor [T, B, D, G*H], got {type(gx).__name__}")
    check_floating("gx", gx)
    G = _GATES[cell]
    if gx.dim() != 4:
        raise ValueError(f"gx: expected rank 4 [T, B, D, {G}*H], got shape {list(gx.shape)}")
    T, B, D, GH = gx.shape
    if T == 0:
        raise ValueError("gx: the sequence is empty (T = 0); a recurrence needs at least one step")
    if D not in (1, 2):
        raise ValueError(f"gx: expected D = 1 or 2 directions in dimension 2, got {D}")
    if GH % G != 0:
        raise ValueError(f"gx: the last dimension must be {G}*H for the {cell.upper()}, got {GH}")
    return T, B, D, GH // G


def _empty(gx: torch.Tensor, *shapes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    # an empty batch (B = 0), or a cell of hidden_size 0: nothing to compute. As torch.nn, empty
    # outputs, still in gx's graph (their gradient reaches it as zeros)
    zero = gx.sum() * 0
    return tuple(zero.expand(shape).clone() for shape in shapes)


def _check_common(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    cell: str,
    P: int | None,
    lengths: torch.Tensor | Sequence[int] | None,
) -> tuple[int, int, int, int, torch.Tensor | None]:
    _, B, D, H = _check_gx(gx, cell)
    G = _GATES[cell]
    if P is None:
        P = H
    like = {"dtype": gx.dtype, "device": gx.device}
    check_tensor("w_hh", w_hh, (D, G * H, P), "[D, G*H, P]", **like)
    return B, D, H, P, check_lengths(lengths, B, gx.device)


def _cudnn_rnn_allows_tf32() -> bool:
    # what cuDNN's RNN follows: torch >= 2.9 resolves torch.backends.cudnn.rnn.fp32_precision, then
    # cudnn's, then the global one ("none" passes on; none set means IEEE); older torch has one flag
    cudnn = torch.backends.cudnn
    rnn = getattr(cudnn, "rnn", None)
    if rnn is None or not hasattr(rnn, "fp32_precision"):
        return bool(cudnn.allow_tf32)
    for value in (rnn.fp32_precision, cudnn.fp32_precision, torch.backends.fp32_precision):
        if value != "none":
            return value == "tf32"
    return False


@torch.compiler.assume_constant_result
def recurrent_precision(device: torch.device, dtype: torch.dtype) -> str:
    """The precision of the recurrent products, as torch.nn's recurrent layers choose it: "tf32" for
    float32 on a GPU while cuDNN's RNN may use TF32 (``torch.backends.cudnn.allow_tf32``, on by
    default; in torch >= 2.9 ``torch.backends.cudnn.rnn.fp32_precision``), else "ieee". Other dtypes
    and the CPU: "ieee" (the argument then changes nothing). A compiled graph keeps the answer it
    was traced with.

    Example:
        >>> recurrent_precision(torch.device("cpu"), torch.float32)
        'ieee'
    """
    if device.type != "cuda" or dtype != torch.float32:
        return "ieee"
    return "tf32" if _cudnn_rnn_allows_tf32() else "ieee"


def _precision(precision: str | None, gx: torch.Tensor) -> str:
    if precision is None:
        return recurrent_precision(gx.device, gx.dtype)
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"precision: expected 'ieee', 'tf32' or None (as torch.nn), got {precision!r}")
    return precision


def _dense(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    # the kernels read every tensor as dense and row-major
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _needs_graph(*tensors: torch.Tensor | None) -> bool:
    # whether the forward keeps what backward needs; always in a torch.jit.trace, whose graph holds
    # that constant for every later run, with or without a gradient
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _call(record: StepGradientsHook | None, op, *args, recompute_gx=None):
    # the per-step record is eager-only: a compiled graph has no Python to call in its backward.
    # Traced with a record that would be called, this raises: fullgraph=True stops with the error,
    # and a plain torch.compile runs this call eagerly (its fallback past an exception), record
    # and all, rather than drop the record without a word. A graph being made of this call
    # (torch.compile or torch.export, torch.jit.trace) is asked here, not in a helper: a helper's
    # own frame, compiled alone, would keep is_compiling's True
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        if record is not None and not (isinstance(record, StepRecord) and not record.active):
            raise RuntimeError(
                "register_step_grad_hook: the per-step gradient record runs Python during backward, "
                "which a compiled or traced graph cannot; remove the hook or run this model eagerly"
            )
        return op(*args)
    with recording_into(record), recomputing_gx(recompute_gx):
        return op(*args)


def rnn(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    *,
    lengths: torch.Tensor | Sequence[int] | None = None,
    nonlinearity: str = "tanh",
    backend: str = "auto",
    record: StepGradientsHook | None = None,
    precision: str | None = None,
    recompute_gx: Callable[[], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elman RNN recurrence h_t = act(gx_t + W_hh h_{t-1}).

    Args:
        gx: [T, B, D, H] input projection, both biases folded in.
        w_hh: [D, H, H]. h0: [D, B, H] or None (zeros).
        lengths: [B] valid steps per sequence (1..T), or None.
        nonlinearity: "tanh" or "relu".
        backend: "auto", "triton", "cpu" or "reference" (see `rnnkit.backends`).
        record: called during backward with the per-step `StepGradients`.
        precision: "ieee" or "tf32" for float32 on a GPU; None follows torch.nn (`recurrent_precision`).
        recompute_gx: a function that makes gx again, differentiably (the layers pass their input
            projection): what a double backward (create_graph=True) differentiates; without it one
            raises. gx itself is not kept.

    Returns:
        y [T, B, D, H] (zero past each length), h_n [D, B, H].

    Example:
        >>> gx = x @ w_ih.T + b_ih + b_hh           # x [T, B, I] -> [T, B, H]
        >>> y, h_n = rnn(gx[:, :, None], w_hh[None])
    """
    training = _needs_graph(gx, w_hh, h0)
    return _rnn(gx, w_hh, h0, lengths, nonlinearity, backend, precision, training, record, recompute_gx)


def _rnn(gx, w_hh, h0, lengths, nonlinearity, backend, precision, training, record, recompute_gx=None):
    # checks, then the operator: (y, h_n)
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    B, D, H, _, lengths = _check_common(gx, w_hh, "rnn", None, lengths)
    if h0 is not None:
        check_tensor("h0", h0, (D, B, H), "[D, B, H]", dtype=gx.dtype, device=gx.device)
    if B == 0 or H == 0:
        return _empty(gx, (gx.shape[0], B, D, H), (D, B, H))
    ops = operators_for(backend, gx.device, gx.dtype)
    precision = _precision(precision, gx)
    with no_autocast(gx.device.type):
        args = (*_dense(gx, w_hh, h0, lengths), nonlinearity, training, precision)
        return _call(record if training else None, ops.rnn_fwd, *args, recompute_gx=recompute_gx)


def lstm(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    *,
    w_hr: torch.Tensor | None = None,
    lengths: torch.Tensor | Sequence[int] | None = None,
    backend: str = "auto",
    record: StepGradientsHook | None = None,
    precision: str | None = None,
    zoneout: float = 0.0,
    recompute_gx: Callable[[], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LSTM recurrence (gates i, f, g, o), with torch.nn's optional projection.

    Args:
        gx: [T, B, D, 4H] input projection, both biases folded in.
        w_hh: [D, 4H, P] with P = H, or proj_size when ``w_hr`` is given.
        h0: [D, B, P] or None. c0: [D, B, H] or None.
        w_hr: [D, P, H] projection h_t = W_hr (o ⊙ tanh c_t), or None.
        lengths: [B] valid steps per sequence (1..T), or None.
        backend: "auto", "triton", "cpu" or "reference".
        record: called during backward with the per-step `StepGradients` (h and c).
        precision: "ieee" or "tf32" for float32 on a GPU; None follows torch.nn (`recurrent_precision`).
        zoneout: cell zoneout's expectation with this probability p (`rnnkit.zoneout`, inference):
            the cell applies i' = (1 - p) i and f' = p + (1 - p) f. 0: the plain LSTM.
        recompute_gx: a function that makes gx again, differentiably (the layers pass their input
            projection): what a double backward (create_graph=True) differentiates; without it one
            raises. gx itself is not kept.

    Returns:
        y [T, B, D, P] (zero past each length), h_n [D, B, P], c_n [D, B, H].

    Example:
        >>> gx = (x @ w_ih.T + b_ih + b_hh).view(T, B, 1, 4 * H)
        >>> y, h_n, c_n = lstm(gx, w_hh[None])
    """
    training = _needs_graph(gx, w_hh, h0, c0, w_hr)
    args = (gx, w_hh, h0, c0, w_hr, lengths, backend, precision, training, record, zoneout, recompute_gx)
    y, h_n, c_n, _, _ = _lstm(*args)
    return y, h_n, c_n


def _lstm(
    gx, w_hh, h0, c0, w_hr, lengths, backend, precision, training, record, zoneout=0.0, recompute_gx=None
):
    # checks, then the operator: (y, h_n, c_n, gates, c_steps), the last two kept for backward
    zoneout = check_probability("zoneout", zoneout)
    P = None
    if w_hr is not None:
        if not isinstance(w_hr, torch.Tensor) or w_hr.dim() != 3:
            shape = list(w_hr.shape) if isinstance(w_hr, torch.Tensor) else type(w_hr).__name__
            raise ValueError(f"w_hr: expected shape [D, P, H], got {shape}")
        P = w_hr.shape[1]
    B, D, H, P, lengths = _check_common(gx, w_hh, "lstm", P, lengths)
    like = {"dtype": gx.dtype, "device": gx.device}
    if w_hr is not None:
        check_tensor("w_hr", w_hr, (D, P, H), "[D, P, H]", **like)
    if h0 is not None:
        check_tensor("h0", h0, (D, B, P), "[D, B, P]", **like)
    if c0 is not None:
        check_tensor("c0", c0, (D, B, H), "[D, B, H]", **like)
    if B == 0 or H == 0:
        T = gx.shape[0]
        return _empty(gx, (T, B, D, P), (D, B, P), (D, B, H), (T, B, D, 4 * H), (T, B, D, H))
    ops = operators_for(backend, gx.device, gx.dtype)
    precision = _precision(precision, gx)
    with no_autocast(gx.device.type):
        args = (*_dense(gx, w_hh, h0, c0, w_hr, lengths), training, zoneout, precision)
        return _call(record if training else None, ops.lstm_fwd, *args, recompute_gx=recompute_gx)


def gru(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    b_hn: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    *,
    lengths: torch.Tensor | Sequence[int] | None = None,
    backend: str = "auto",
    record: StepGradientsHook | None = None,
    precision: str | None = None,
    recompute_gx: Callable[[], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRU recurrence (gates r, z, n), as torch.nn: the reset gate multiplies W_hn h + b_hn.

    Args:
        gx: [T, B, D, 3H] input projection: b_ih folded in, and b_hh's r and z blocks.
        w_hh: [D, 3H, H]. b_hn: [D, H] (b_hh's n block) or None.
        h0: [D, B, H] or None.
        lengths: [B] valid steps per sequence (1..T), or None.
        backend: "auto", "triton", "cpu" or "reference".
        record: called during backward with the per-step `StepGradients`.
        precision: "ieee" or "tf32" for float32 on a GPU; None follows torch.nn (`recurrent_precision`).
        recompute_gx: a function that makes gx again, differentiably (the layers pass their input
            projection): what a double backward (create_graph=True) differentiates; without it one
            raises. gx itself is not kept.

    Returns:
        y [T, B, D, H] (zero past each length), h_n [D, B, H].

    Example:
        >>> y, h_n = gru(gx.view(T, B, 1, 3 * H), w_hh[None], b_hh[None, 2 * H :])
    """
    training = _needs_graph(gx, w_hh, b_hn, h0)
    y, h_n, _, _ = _gru(gx, w_hh, b_hn, h0, lengths, backend, precision, training, record, recompute_gx)
    return y, h_n


def _gru(gx, w_hh, b_hn, h0, lengths, backend, precision, training, record, recompute_gx=None):
    # checks, then the operator: (y, h_n, gates, ghn), the last two kept for backward
    B, D, H, _, lengths = _check_common(gx, w_hh, "gru", None, lengths)
    like = {"dtype": gx.dtype, "device": gx.device}
    if b_hn is not None:
        check_tensor("b_hn", b_hn, (D, H), "[D, H]", **like)
    if h0 is not None:
        check_tensor("h0", h0, (D, B, H), "[D, B, H]", **like)
    if B == 0 or H == 0:
        T = gx.shape[0]
        return _empty(gx, (T, B, D, H), (D, B, H), (T, B, D, 3 * H), (T, B, D, H))
    ops = operators_for(backend, gx.device, gx.dtype)
    precision = _precision(precision, gx)
    with no_autocast(gx.device.type):
        args = (*_dense(gx, w_hh, b_hn, h0, lengths), training, precision)
        return _call(record if training else None, ops.gru_fwd, *args, recompute_gx=recompute_gx)


def linear(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *, backend: str = "auto"
) -> torch.Tensor:
    """The input projection ``x @ wᵀ + b`` (`F.linear`) by the backend that runs x: the CPU backend
    puts large fp32 products on oneDNN or into pooled buffers, and lays its gradient out for them.

    Args:
        x: [..., K]. w: [N, K]. b: [N] or None. backend: as the recurrence's.

    Returns:
        [..., N].

    Example:
        >>> gx = linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)  # [T, B, 4H]
    """
    return backends.functions(backend_for(backend, x.device, x.dtype)).linear(x, w, b)


def layer_stack(
    mode: str,
    x: torch.Tensor,
    weights: list[torch.Tensor],
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    lengths: torch.Tensor | None,
    *,
    bias: bool,
    num_layers: int,
    bidirectional: bool,
    width: int,
    hidden: int,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """A whole stack's inference in one fused call, where the backend that runs x has one for this
    call (the CPU backend: torch's own recurrence, eager, no gradient asked for); else None, and the
    caller runs the layers one by one. Arguments as `kernels.cpu.layer_stack`'s.

    Returns:
        (output [T, B, D*P], h_n [L*D, B, P], c_n [L*D, B, H] or None), or None.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # a graph: rnnkit's operators
        return None
    fused = backends.functions(backend_for(backend, x.device, x.dtype)).layer_stack
    if fused is None:
        return None
    settings = {"bias": bias, "num_layers": num_layers, "bidirectional": bidirectional}
    return fused(mode, x, weights, h0, c0, lengths, **settings, width=width, hidden=hidden)


def cell_step(
    mode: str,
    x: torch.Tensor,
    weights: list[torch.Tensor | None],
    states: list[torch.Tensor],
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, ...] | None:
    """One cell step by the backend's own fused cell, where it has one for this call (the CPU
    backend: torch's cell, autograd included); else None. x [B, I]; weights (w_ih, w_hh, b_ih,
    b_hh); states [] or [h] (LSTM [h, c]), [B, H] each.

    Returns:
        (h',) or (h', c'), or None.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # a graph: rnnkit's operators
        return None
    step = backends.functions(backend_for(backend, x.device, x.dtype)).cell_step
    return None if step is None else step(mode, x, weights, states)


@torch.no_grad()
def activations(
    mode: str,
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    *,
    w_hr: torch.Tensor | None = None,
    b_hn: torch.Tensor | None = None,
    lengths: torch.Tensor | Sequence[int] | None = None,
    backend: str = "auto",
    zoneout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One layer's forward with what its backward would keep: the gate activations, for diagnostics
    (no graph). Arguments as `lstm`, `gru`, `rnn`; ``mode`` is torch.nn's ("LSTM", "GRU", "RNN_TANH",
    "RNN_RELU").

    Returns:
        y [T, B, D, P]; the gates the cell applies [T, B, D, G*H] (LSTM i, f, g, o, with zoneout
        i' and f'; GRU r, z, n; None for the RNN); the LSTM's c_t [T, B, D, H] (else None). Zero
        past each sequence's length.
    """
    if mode == "LSTM":
        args = (gx, w_hh, h0, c0, w_hr, lengths, backend, None, True, None, zoneout)
        y, _, _, gates, cell = _lstm(*args)
        if zoneout:  # the backends keep σ of i and f; the cell applies (1 - p) σ and p + (1 - p) σ
            H = gates.shape[-1] // 4
            gates[..., :H] *= 1 - zoneout
            f = gates[..., H : 2 * H].mul_(1 - zoneout).add_(zoneout)
            if lengths is not None:  # zero past each length, as the other gates
                T = gates.shape[0]
                steps = torch.arange(T, device=gates.device)[:, None]
                f.masked_fill_((steps >= torch.as_tensor(lengths, device=gates.device))[..., None, None], 0.0)
        return y, gates, cell
    if mode == "GRU":
        y, _, gates, _ = _gru(gx, w_hh, b_hn, h0, lengths, backend, None, True, None)
        return y, gates, None
    nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[mode]
    y, _ = _rnn(gx, w_hh, h0, lengths, nonlinearity, backend, None, True, None)
    return y, None, None
