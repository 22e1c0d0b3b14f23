"""Autograd of the recurrence ops: the backend's backward op walks time in reverse; the weight
gradients are large matrix products over all steps at once (deterministic, no atomics).

    # T steps, B batch, D directions, H hidden, P recurrent width, G gates
    dW_hh[d] = Σ_{t,b} dgates[t, b, d]ᵀ h_prev[t, b, d]      one [G·H, T·B] @ [T·B, P] per direction
    dW_hr[d] = Σ_{t,b} dh[t, b, d]ᵀ (o ⊙ tanh c)[t, b, d]      (LSTM with proj_size)

The formulas are registered on the forward ops (`torch.library.register_autograd`), so eager
autograd, `torch.compile` and `torch.export` all use them.

The per-step record, the whole contract in this module. An operator's arguments are tensors and
numbers, so the `StepRecord` of a call cannot be one: `rnnkit.functional` calls the forward op inside
`recording_into(record)`, the op's `setup_context` takes the record from that block (a thread-local
slot, read nowhere else) into its ctx, and its backward calls ``record(StepGradients)`` if
``record.active`` is true then; a plain callable is always active. Eager only: a compiled graph has
no Python to call in its backward.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from kernels import reference
from kernels.reference import compute_dtype, previous_states


@dataclass(frozen=True)
class StepGradients:
    """The total gradient of every step's state, from one backward pass of one layer.

    Attributes:
        h: [T, B, D, P] float32, dL/dh_t: the direct gradient of y_t plus what flows back
            from step t+1 (zero past a sequence's length).
        c: [T, B, D, H] float32, dL/dc_t for the LSTM (None for RNN and GRU).
        lengths: [B] int64 valid steps per sequence, or None.
    """

    h: torch.Tensor
    c: torch.Tensor | None
    lengths: torch.Tensor | None


@runtime_checkable
class StepRecord(Protocol):
    """What receives a layer's `StepGradients` in backward. ``active`` is asked then, not at forward
    time: a recorder may start between a forward and its backward (a layer's record is active while it
    has hooks registered)."""

    active: bool

    def __call__(self, grads: StepGradients) -> None: ...


StepGradientsHook = StepRecord | Callable[[StepGradients], None]

_pending = threading.local()  # the record of the forward op being called; see the module docstring


@contextlib.contextmanager
def recording_into(record: StepGradientsHook | None) -> Iterator[None]:
    """The forward op called inside this block hands its backward's `StepGradients` to ``record``."""
    _pending.record = record
    try:
        yield
    finally:
        _pending.record = None


@contextlib.contextmanager
def recomputing_gx(source: Callable[[], torch.Tensor] | None) -> Iterator[None]:
    """The forward op called inside this block can make its gx again, differentiably, with
    ``source()`` (a layer's input projection of its input): what a double backward differentiates
    (the op keeps the callable, not gx; the input it reads is kept by the projection's backward)."""
    _pending.gx_source = source
    try:
        yield
    finally:
        _pending.gx_source = None


def _record_of_call() -> StepGradientsHook | None:
    # setup_context's half of the contract: the record of the op call in progress
    return getattr(_pending, "record", None)


def _recording(ctx) -> StepGradientsHook | None:
    # backward's half: the record, if it is active now
    record = ctx.record
    if record is None or (isinstance(record, StepRecord) and not record.active):
        return None
    return record


def _sum_over_steps(sum_over_rows, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # [T, B, D, M], [T, B, D, N] -> [D, M, N] = Σ_{t,b} a[t, b, d]ᵀ b[t, b, d]: one [M, T·B] @ [T·B, N]
    # product per direction, on strided views (no transposed copy of a), by the backend's product
    T, B, D, M = a.shape
    b = b.to(a.dtype)
    return torch.stack([sum_over_rows(a[:, :, d].reshape(T * B, M), b[:, :, d].reshape(T * B, -1))
                        for d in range(D)])  # fmt: skip


def _time_major(dgx: torch.Tensor, gate_major: bool) -> torch.Tensor:
    # a backward op that writes dgx gate-major returns the dense [D, G, T, B] (see `rnnkit.ops`):
    # viewed as [T, B, D, G], the weight gradients read it as it lies
    return dgx.permute(2, 3, 0, 1) if gate_major else dgx


def _dense(*grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    # the kernels take dense tensors; an incoming gradient may be expanded or strided (a sum's)
    return tuple(None if g is None else g.contiguous() for g in grads)


def _check_saved(ctx, cell: str) -> None:
    if not ctx.training:
        raise RuntimeError(
            f"{cell}_fwd: called with training=False, so it kept nothing for backward; "
            "call it with training=True where gradients are needed"
        )


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """The backends do their own fp32 math on the dtype they are given: autocast stays out, forward
    and backward (and where it is off, no context at all: exported graphs stay flat)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _weight_gradients(cell: str, sum_over_rows, needs: dict[str, bool], v: dict, out: dict) -> dict:
    # the gradients of the recurrent weights (and the GRU's b_hn), over all steps at once, from what
    # the forward kept (v) and what the backward op returned (out): the one part that is per cell
    grads = {}
    if needs["w_hh"]:
        dgh = out["dgx"]
        if cell == "gru":  # the hidden side's gates: r and z of gx, and n of W_hn h + b_hn
            H = v["ghn"].shape[-1]
            dgh = torch.cat((dgh[..., : 2 * H], out["dghn"]), dim=-1)
        grads["w_hh"] = _sum_over_steps(sum_over_rows, dgh, previous_states(v["y"], v["h0"], v["lengths"]))
    if cell == "lstm" and v["w_hr"] is not None and needs["w_hr"]:
        gates, c_steps = v["gates"], v["c_steps"]
        H, ct = c_steps.shape[-1], compute_dtype(gates)
        m = gates[..., 3 * H :].to(ct) * torch.tanh(c_steps.to(ct))  # projection input o ⊙ tanh c
        grads["w_hr"] = _sum_over_steps(sum_over_rows, out["dh_steps"], m).to(v["w_hr"].dtype)
    if cell == "gru" and needs["b_hn"]:
        grads["b_hn"] = out["dghn"].sum(dim=(0, 1))
    return grads


# the forward outputs a caller sees; the others are what the backward needs (not differentiable)
_STATES = ("y", "h_n", "c_n")


_OPTIONS = ("nonlinearity", "training", "zoneout", "precision")  # the forward's non-tensor arguments


def _formula(cell: str, bwd, sum_over_rows, gate_major: bool):
    # setup_context and backward of <cell>_fwd, from the reference's signatures: the forward's inputs
    # and outputs and the upstream gradients d<output> are matched to the backward's parameters by name
    fwd_params = list(inspect.signature(getattr(reference, f"{cell}_fwd")).parameters)
    fwd_outputs = typing.get_type_hints(getattr(reference, f"{cell}_fwd"))["return"]._fields
    bwd_signature = inspect.signature(getattr(reference, f"{cell}_bwd")).parameters.values()
    bwd_outputs = typing.get_type_hints(getattr(reference, f"{cell}_bwd"))["return"]._fields
    bwd_tensors = [p.name for p in bwd_signature if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    bwd_options = [p.name for p in bwd_signature if p.kind is inspect.Parameter.KEYWORD_ONLY]
    fwd_tensors = fwd_params[: len(fwd_params) - sum(p in _OPTIONS for p in fwd_params)]
    saved_inputs = [n for n in fwd_tensors if n != "gx"]
    saved_outputs = [n for n in fwd_outputs if n not in _STATES[1:]]  # y, and what backward needs

    def setup_context(ctx, inputs, output):
        v = dict(zip(fwd_params, inputs, strict=True)) | dict(zip(fwd_outputs, output, strict=True))
        ctx.options = {n: v[n] for n in fwd_params if n in _OPTIONS}  # training, precision, ...
        ctx.training = ctx.options["training"]
        ctx.save_for_backward(*(v[n] for n in (*saved_inputs, *saved_outputs)))
        ctx.mark_non_differentiable(*(v[n] for n in saved_outputs if n not in _STATES))
        ctx.set_materialize_grads(False)
        ctx.record = _record_of_call()
        ctx.gx_source = getattr(_pending, "gx_source", None)
        ctx.device_type = v["w_hh"].device.type

    def backward(ctx, *grads):
        _check_saved(ctx, cell)
        v = dict(zip((*saved_inputs, *saved_outputs), ctx.saved_tensors, strict=True))
        upstream = {f"d{n}": g for n, g in zip(fwd_outputs, grads, strict=True) if n in _STATES}
        needs = dict(zip(fwd_params, ctx.needs_input_grad, strict=True))
        record = _recording(ctx)
        if torch.is_grad_enabled():  # create_graph=True: a gradient that is differentiable itself
            if record is not None:  # the record from the backend's backward (no weight gradients)
                with torch.no_grad():
                    backward_op(ctx, dict(v), dict(upstream), dict.fromkeys(needs, False), record)
            return _differentiable_backward(ctx, cell, fwd_tensors, v, upstream, needs)
        return backward_op(ctx, v, upstream, needs, record)

    def backward_op(ctx, v, upstream, needs, record):
        v |= dict(zip(upstream, _dense(*upstream.values()), strict=True))
        options = {**ctx.options, "record": record is not None}
        with no_autocast(ctx.device_type):
            out = bwd(*(v.get(n) for n in bwd_tensors), *(options[n] for n in bwd_options))
            out = dict(zip(bwd_outputs, out, strict=True))
            out["dgx"] = _time_major(out["dgx"], gate_major)
            if record is not None:
                record(StepGradients(out["dh_steps"], out.get("dc_steps"), v["lengths"]))
            found = {"gx": out["dgx"], "h0": out["dh0"], "c0": out.get("dc0")}
            found |= _weight_gradients(cell, sum_over_rows, needs, v, out)
        return tuple(found.get(n) if need else None for n, need in needs.items())

    return setup_context, backward


def _differentiable_backward(ctx, cell: str, fwd_tensors: list[str], v: dict, upstream: dict, needs: dict):
    # The backward of a create_graph=True pass: the reference's forward run again in torch ops on the
    # same inputs (gx made again from the layer's input), differentiated by autograd with a graph,
    # so that a second backward differentiates the gradient
    if ctx.gx_source is None:
        raise RuntimeError(
            f"{cell}: a double backward (create_graph=True) runs the forward again from gx, which the "
            f"op does not keep: call it through rnnkit's layers or cells, or pass "
            f"rnnkit.functional.{cell}(..., recompute_gx=<a function that returns gx>)"
        )
    inputs = {n: v.get(n) for n in fwd_tensors} | {"gx": ctx.gx_source()}
    with no_autocast(ctx.device_type):
        out = getattr(reference, f"{cell}_fwd")(**inputs, **ctx.options)._asdict()
    pairs = [(out[n], upstream[f"d{n}"]) for n in _STATES if upstream.get(f"d{n}") is not None]
    wrt = [n for n in fwd_tensors if needs[n] and inputs[n] is not None]
    grads = torch.autograd.grad(
        [o for o, _ in pairs], [inputs[n] for n in wrt], [g for _, g in pairs], create_graph=True,
        allow_unused=True,
    )  # fmt: skip
    found = dict(zip(wrt, grads, strict=True))
    return tuple(found.get(n) for n in needs)


def register(fwd, bwd, cell: str, sum_over_rows, *, gate_major: bool = False) -> None:
    """Register the autograd of forward op ``fwd`` of ``cell``, whose backward calls op ``bwd``; the
    backward op itself has no derivative, and says so when a second backward reaches it.
    ``sum_over_rows(a, b)``: the backend's aᵀ @ b, for the weight gradients. ``gate_major``: the
    backward op returns dgx as [D, G, T, B] (see `rnnkit.ops`)."""
    setup_context, backward = _formula(cell, bwd, sum_over_rows, gate_major)
    fwd.register_autograd(backward, setup_context=setup_context)
    bwd.register_autograd(_no_double_backward(bwd), setup_context=lambda ctx, inputs, output: None)


def _no_double_backward(bwd):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"rnnkit.{bwd._name} has no derivative of its own: a double backward (create_graph=True) "
            "through rnnkit's layers runs their forward again in torch ops instead; call the "
            "forward operator, not the backward one"
        )

    return backward
