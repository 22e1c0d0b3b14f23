"""The recurrence as PyTorch custom operators, so that compilers see one opaque op per layer.

Each backend's forward and backward of each cell is an operator in the ``rnnkit`` namespace:

    torch.ops.rnnkit.{backend}_{cell}_{fwd|bwd}     backend: triton, cpu, reference   cell: rnn, lstm, gru

The reference and CPU ops are `torch.library.custom_op`s with fake (meta) implementations; the Triton ops
are `torch.library.triton_op`s, whose kernels `torch.compile` sees through `wrap_triton`. Every
forward op has its autograd registered (`rnnkit.autograd`), so ``torch.compile(fullgraph=True)``
and ``torch.export`` trace a layer as a handful of ops, not as a Python loop over time steps.

The arguments are those of `kernels.reference` in order, keyword ones last (``precision``, "ieee"
or "tf32", is that of the fp32 recurrent products: `rnnkit.functional` picks it as torch.nn would).
An op cannot return None: where a kernel returns None (nothing saved in inference, no record), the
op returns an empty tensor.
"""

import functools
import inspect
import typing
from types import SimpleNamespace

import torch
from torch import Tensor

from kernels import reference
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


# --- implementations: one wrapper per function, made from the reference's signature -----------------


def _implementation(name: str, run, gate_major: bool):
    """The operator body of a backend's function ``run`` (named ``name``, e.g. "lstm_bwd"): the
    reference's parameters in order, keyword ones last, as positional operator arguments; returns
    the fields of its NamedTuple, None as an empty tensor. `torch.library` reads the signature and
    the type hints of `kernels.reference.<name>`. ``run`` is called by a plain (closure) name: that
    is how torch.library.triton_op finds the kernels a launcher starts. ``gate_major``: the
    backward's dgx comes back as the dense [D, G, T, B] it lies in, which `rnnkit.autograd` views as
    [T, B, D, G] (an operator's output must be what its fake says, dense row-major)."""
    contract = getattr(reference, name)
    hints = typing.get_type_hints(contract)
    params = list(inspect.signature(contract).parameters.values())
    n_tensors = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    options = [p.name for p in params[n_tensors:]]
    like = next(k for k, p in enumerate(params) if hints[p.name] is Tensor)  # a tensor never None
    lengths = next((k for k, p in enumerate(params) if p.name == "lengths"), None)
    forward = name.endswith("_fwd")

    def implementation(*args):
        if forward:
            check_length_values(args[lengths], args[0].shape[0])
        out = run(*args[:n_tensors], **dict(zip(options, args[n_tensors:], strict=True)))
        outs = [_or_nothing(t, args[like]) for t in out]
        if gate_major:
            outs[0] = outs[0].permute(2, 3, 0, 1)
        return tuple(outs)

    implementation.__signature__ = inspect.Signature(
        [
            inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=hints[p.name])
            for p in params
        ],
        return_annotation=tuple[(Tensor,) * len(hints["return"]._fields)],
    )
    return implementation


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


def _fake_lstm_fwd(gx, w_hh, h0, c0, w_hr, lengths, training, zoneout, precision):
    T, B, D, G = gx.shape
    H, P = G // 4, w_hh.shape[2]
    saved = (gx.new_empty(T, B, D, G), gx.new_empty(T, B, D, H)) if training else (_nothing(gx), _nothing(gx))
    return gx.new_empty(T, B, D, P), gx.new_empty(D, B, P), gx.new_empty(D, B, H), *saved


def _fake_lstm_bwd(
    dy, dh_n, dc_n, w_hh, w_hr, c0, gates, c_steps, lengths, record, zoneout, precision, gate_major=False
):
    T, B, D, G = gates.shape
    H, P = G // 4, w_hh.shape[2]
    return (
        gates.new_empty(D, G, T, B) if gate_major else gates.new_empty(T, B, D, G),  # (`_implementations`)
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


def _register(backend: str, fns: SimpleNamespace) -> SimpleNamespace:
    ops = {}
    gate_major = backends.BACKENDS[backend].gate_major
    for kind in backends.OPS:
        fn = _implementation(kind, getattr(fns, kind), kind == "lstm_bwd" and "lstm" in gate_major)
        name = f"{NAMESPACE}::{backend}_{kind}"
        fn.__name__ = fn.__qualname__ = f"{backend}_{kind}"
        if backend == "triton":
            op = torch.library.triton_op(name, fn, mutates_args=())
        else:
            op = torch.library.custom_op(name, fn, mutates_args=())
            fake = _FAKES[kind]
            if kind == "lstm_bwd" and "lstm" in gate_major:
                fake = functools.partial(fake, gate_major=True)
            op.register_fake(fake)
        ops[kind] = op
    for cell in ("rnn", "lstm", "gru"):
        autograd.register(
            ops[f"{cell}_fwd"], ops[f"{cell}_bwd"], cell, fns.sum_over_rows, gate_major=cell in gate_major
        )
    return SimpleNamespace(name=backend, **ops)


_REGISTERED: dict[str, SimpleNamespace] = {}


@torch.compiler.assume_constant_result
def backend_for(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """`rnnkit.backends.backend_name`, with that backend's operators registered: a compiler calls this
    once while tracing and keeps the answer (a graph compiled for one backend stays on it, whatever
    RNNKIT_BACKEND says later), so no operator is registered inside a trace."""
    name = backends.backend_name(backend, device, dtype)
    backend_ops(name)
    return name


def operators_for(backend: str, device: torch.device, dtype: torch.dtype) -> SimpleNamespace:
    """The operators of the backend that runs tensors of ``dtype`` on ``device``: the one backend
    lookup of a call (see `rnnkit.backends.backend_name` for the rules).

    Example:
        >>> operators_for("auto", torch.device("cpu"), torch.float32).name
        'cpu'
    """
    return backend_ops(backend_for(backend, device, dtype))


def backend_ops(backend: str) -> SimpleNamespace:
    """The six operators of a backend (a name of `rnnkit.backends.BACKENDS`), registered on first use.

    The Triton ops import the kernels (and triton): ``backend_ops("triton")`` raises
    `rnnkit.BackendUnavailableError` where they cannot load.
    """
    if backend not in _REGISTERED:
        if backend not in backends.BACKENDS:
            raise ValueError(
                f"backend: expected one of {', '.join(map(repr, backends.BACKENDS))}, got {backend!r}"
            )
        _REGISTERED[backend] = _register(backend, backends.functions(backend))
    return _REGISTERED[backend]
