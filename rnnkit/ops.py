"""The recurrence as PyTorch custom operators, so that compilers see one opaque op per layer.

Each backend's forward and backward of each cell is an operator in the ``rnnkit`` namespace:

    torch.ops.rnnkit.{backend}_{cell}_{fwd|bwd}     backend: reference, triton   cell: rnn, lstm, gru

The reference ops are `torch.library.custom_op`s with fake (meta) implementations; the Triton ops
are `torch.library.triton_op`s, whose kernels `torch.compile` sees through `wrap_triton`. Every
forward op has its autograd registered (`rnnkit.autograd`), so ``torch.compile(fullgraph=True)``
and ``torch.export`` trace a layer as a handful of ops, not as a Python loop over time steps.

The arguments are those of `kernels.reference` in order, keyword ones last (``precision``, "ieee"
or "tf32", is that of the fp32 recurrent products: `rnnkit.functional` picks it as torch.nn would).
An op cannot return None: where a kernel returns None (nothing saved in inference, no record), the
op returns an empty tensor.
"""

from types import SimpleNamespace

import torch
from torch import Tensor

from rnnkit import autograd, backends

NAMESPACE = "rnnkit"


def _nothing(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _or_nothing(t: Tensor | None, like: Tensor) -> Tensor:
    return _nothing(like) if t is None else t


def _is_fake(t: Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def check_length_values(lengths: Tensor | None, steps: int) -> None:
    """Every length must lie in [1, steps]. Run where the values exist: in the op, at run time
    (eager or compiled), never while a compiler traces with fake tensors."""
    if lengths is None or _is_fake(lengths):
        return
    lo, hi = torch.stack(torch.aminmax(lengths)).tolist()  # one device sync
    if lo < 1:
        raise ValueError(f"lengths: every length must be at least 1, got a length of {lo}")
    if hi > steps:
        raise ValueError(f"lengths: every length must be at most the number of steps T = {steps}, got {hi}")


# --- implementations: one set of wrappers around a kernels module, for either backend ---------------


def _implementations(fns: SimpleNamespace, gate_major: tuple[str, ...]) -> dict[str, object]:
    # fns: the six functions of `kernels.reference` or of the Triton launchers. The wrappers call
    # them by plain names: that is how torch.library.triton_op finds the kernels they launch.
    # gate_major: the cells whose backward op returns dgx as the dense [D, G, T, B] it was written in
    # (the reference LSTM's), which `rnnkit.autograd` views as [T, B, D, G]: an operator's output
    # must be what its fake says, and compilers take a custom op's outputs as dense row-major
    run_rnn_fwd, run_rnn_bwd = fns.rnn_fwd, fns.rnn_bwd
    run_lstm_fwd, run_lstm_bwd = fns.lstm_fwd, fns.lstm_bwd
    run_gru_fwd, run_gru_bwd = fns.gru_fwd, fns.gru_bwd

    def rnn_fwd(
        gx: Tensor,
        w_hh: Tensor,
        h0: Tensor | None,
        lengths: Tensor | None,
        nonlinearity: str,
        training: bool,
        precision: str,
    ) -> tuple[Tensor, Tensor]:
        check_length_values(lengths, gx.shape[0])
        out = run_rnn_fwd(
            gx, w_hh, h0, lengths, nonlinearity=nonlinearity, training=training, precision=precision
        )
        return out.y, out.h_n

    def rnn_bwd(
        dy: Tensor | None,
        dh_n: Tensor | None,
        y: Tensor,
        w_hh: Tensor,
        lengths: Tensor | None,
        nonlinearity: str,
        record: bool,
        precision: str,
    ) -> tuple[Tensor, Tensor, Tensor]:
        out = run_rnn_bwd(
            dy, dh_n, y, w_hh, lengths, nonlinearity=nonlinearity, record=record, precision=precision
        )
        return out.dgx, out.dh0, _or_nothing(out.dh_steps, y)

    def lstm_fwd(
        gx: Tensor,
        w_hh: Tensor,
        h0: Tensor | None,
        c0: Tensor | None,
        w_hr: Tensor | None,
        lengths: Tensor | None,
        training: bool,
        precision: str,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        check_length_values(lengths, gx.shape[0])
        out = run_lstm_fwd(gx, w_hh, h0, c0, w_hr, lengths, training=training, precision=precision)
        return out.y, out.h_n, out.c_n, _or_nothing(out.gates, gx), _or_nothing(out.c_steps, gx)

    def lstm_bwd(
        dy: Tensor | None,
        dh_n: Tensor | None,
        dc_n: Tensor | None,
        w_hh: Tensor,
        w_hr: Tensor | None,
        c0: Tensor | None,
        gates: Tensor,
        c_steps: Tensor,
        lengths: Tensor | None,
        record: bool,
        precision: str,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        out = run_lstm_bwd(
            dy, dh_n, dc_n, w_hh, w_hr, c0, gates, c_steps, lengths, record=record, precision=precision
        )
        steps = (_or_nothing(out.dh_steps, gates), _or_nothing(out.dc_steps, gates))
        dgx = out.dgx.permute(2, 3, 0, 1) if "lstm" in gate_major else out.dgx
        return dgx, out.dh0, out.dc0, *steps

    def gru_fwd(
        gx: Tensor,
        w_hh: Tensor,
        b_hn: Tensor | None,
        h0: Tensor | None,
        lengths: Tensor | None,
        training: bool,
        precision: str,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        check_length_values(lengths, gx.shape[0])
        out = run_gru_fwd(gx, w_hh, b_hn, h0, lengths, training=training, precision=precision)
        return out.y, out.h_n, _or_nothing(out.gates, gx), _or_nothing(out.ghn, gx)

    def gru_bwd(
        dy: Tensor | None,
        dh_n: Tensor | None,
        w_hh: Tensor,
        h0: Tensor | None,
        y: Tensor,
        gates: Tensor,
        ghn: Tensor,
        lengths: Tensor | None,
        record: bool,
        precision: str,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = run_gru_bwd(dy, dh_n, w_hh, h0, y, gates, ghn, lengths, record=record, precision=precision)
        return out.dgx, out.dghn, out.dh0, _or_nothing(out.dh_steps, y)

    return {
        "rnn_fwd": rnn_fwd,
        "rnn_bwd": rnn_bwd,
        "lstm_fwd": lstm_fwd,
        "lstm_bwd": lstm_bwd,
        "gru_fwd": gru_fwd,
        "gru_bwd": gru_bwd,
    }


# --- fake implementations: shapes and dtypes only, for the reference ops ----------------------------
# (a triton_op is its own fake: its launcher allocates, and wrap_triton makes the launch a no-op)


def _steps_or_nothing(keep: bool, like: Tensor, *shape) -> Tensor:
    return like.new_empty(shape, dtype=torch.float32) if keep else _nothing(like)


def _fake_rnn_fwd(gx, w_hh, h0, lengths, nonlinearity, training, precision):
    T, B, D, H = gx.shape
    return gx.new_empty(T, B, D, H), gx.new_empty(D, B, H)


def _fake_rnn_bwd(dy, dh_n, y, w_hh, lengths, nonlinearity, record, precision):
    T, B, D, H = y.shape
    return y.new_empty(T, B, D, H), y.new_empty(D, B, H), _steps_or_nothing(record, y, T, B, D, H)


def _fake_lstm_fwd(gx, w_hh, h0, c0, w_hr, lengths, training, precision):
    T, B, D, G = gx.shape
    H, P = G // 4, w_hh.shape[2]
    saved = (gx.new_empty(T, B, D, G), gx.new_empty(T, B, D, H)) if training else (_nothing(gx), _nothing(gx))
    return gx.new_empty(T, B, D, P), gx.new_empty(D, B, P), gx.new_empty(D, B, H), *saved


def _fake_lstm_bwd(dy, dh_n, dc_n, w_hh, w_hr, c0, gates, c_steps, lengths, record, precision):
    T, B, D, G = gates.shape
    H, P = G // 4, w_hh.shape[2]
    return (
        gates.new_empty(D, G, T, B),  # the reference's gate-major dgx (`_implementations`)
        gates.new_empty(D, B, P),
        gates.new_empty(D, B, H),
        _steps_or_nothing(record or w_hr is not None, gates, T, B, D, P),
        _steps_or_nothing(record, gates, T, B, D, H),
    )


def _fake_gru_fwd(gx, w_hh, b_hn, h0, lengths, training, precision):
    T, B, D, G = gx.shape
    H = G // 3
    saved = (gx.new_empty(T, B, D, G), gx.new_empty(T, B, D, H)) if training else (_nothing(gx), _nothing(gx))
    return gx.new_empty(T, B, D, H), gx.new_empty(D, B, H), *saved


def _fake_gru_bwd(dy, dh_n, w_hh, h0, y, gates, ghn, lengths, record, precision):
    T, B, D, H = y.shape
    return (
        gates.new_empty(T, B, D, 3 * H),
        gates.new_empty(T, B, D, H),
        y.new_empty(D, B, H),
        _steps_or_nothing(record, y, T, B, D, H),
    )


_FAKES = {
    "rnn_fwd": _fake_rnn_fwd,
    "rnn_bwd": _fake_rnn_bwd,
    "lstm_fwd": _fake_lstm_fwd,
    "lstm_bwd": _fake_lstm_bwd,
    "gru_fwd": _fake_gru_fwd,
    "gru_bwd": _fake_gru_bwd,
}


# --- registration ------------------------------------------------------------------------------------


# the cells whose backward op returns dgx gate-major, by backend (the reference LSTM's, for oneDNN's
# weight gradients on the CPU)
_GATE_MAJOR = {"reference": ("lstm",), "triton": ()}


def _register(backend: str, fns: SimpleNamespace) -> SimpleNamespace:
    ops = {}
    gate_major = _GATE_MAJOR[backend]
    for kind, fn in _implementations(fns, gate_major).items():
        name = f"{NAMESPACE}::{backend}_{kind}"
        fn.__name__ = fn.__qualname__ = f"{backend}_{kind}"
        if backend == "triton":
            op = torch.library.triton_op(name, fn, mutates_args=())
        else:
            op = torch.library.custom_op(name, fn, mutates_args=())
            op.register_fake(_FAKES[kind])
        ops[kind] = op
    for cell in ("rnn", "lstm", "gru"):
        autograd.register(ops[f"{cell}_fwd"], ops[f"{cell}_bwd"], cell, gate_major=cell in gate_major)
    return SimpleNamespace(name=backend, **ops)


_REGISTERED: dict[str, SimpleNamespace] = {}


@torch.compiler.assume_constant_result
def _registered(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    # `backends.backend_name`, with that backend's operators registered: a compiler calls this once
    # while tracing and keeps the answer (a graph compiled for one backend stays on it, whatever
    # RNNKIT_BACKEND says later), so no operator is registered inside a trace
    name = backends.backend_name(backend, device, dtype)
    backend_ops(name)
    return name


def operators_for(backend: str, device: torch.device, dtype: torch.dtype) -> SimpleNamespace:
    """The operators of the backend that runs tensors of ``dtype`` on ``device``: the one backend
    lookup of a call (see `rnnkit.backends.backend_name` for the rules).

    Example:
        >>> operators_for("auto", torch.device("cpu"), torch.float32).name
        'reference'
    """
    return backend_ops(_registered(backend, device, dtype))


def backend_ops(backend: str) -> SimpleNamespace:
    """The six operators of a backend ("reference" or "triton"), registered on first use.

    The Triton ops import the kernels (and triton): ``backend_ops("triton")`` raises
    `rnnkit.BackendUnavailableError` where they cannot load.
    """
    if backend not in _REGISTERED:
        if backend == "reference":
            fns = backends.reference_functions()
        elif backend == "triton":
            fns = backends.triton_functions()  # BackendUnavailableError where they do not import
        else:
            raise ValueError(f"backend: expected 'reference' or 'triton', got {backend!r}")
        _REGISTERED[backend] = _register(backend, fns)
    return _REGISTERED[backend]
