"""Which implementation runs the recurrence: every backend described once, chosen once per call.

- ``"triton"``: the fused Triton kernels (`kernels.rnn`, `lstm`, `gru`): CUDA tensors of float32,
  float16 or bfloat16, or the CPU under ``TRITON_INTERPRET=1``.
- ``"cpu"``: the fast CPU backend (`kernels.cpu`): oneDNN or MKL products, a compiled LSTM step,
  pooled buffers; its switches are `kernels.cpu.SETTINGS`.
- ``"reference"``: `kernels.reference`, the plain contract, any device and dtype.
- ``"auto"``: Triton for CUDA tensors it takes, when the kernels import; the CPU backend for CPU
  tensors; the reference for anything else. The environment variable ``RNNKIT_BACKEND`` (a backend
  name) replaces what ``auto`` would pick; an explicit ``backend=`` argument always wins.

A `Backend` is its module, which has the six functions of `kernels.reference` with the same
signatures (``rnn_fwd``, ``rnn_bwd``, ``lstm_fwd``, ``lstm_bwd``, ``gru_fwd``, ``gru_bwd``), the one
predicate that says whether it takes a call, and what it offers around the recurrence (the input
projection's and weight gradients' products, a whole stack's fused inference). `rnnkit.ops`
registers the six as operators. This is the one module above `kernels/` that imports a backend.
"""

from __future__ import annotations

import importlib
import os
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import TRITON_DTYPES  # re-exported: where the layers choose a backend

ENV_VAR = "RNNKIT_BACKEND"
OPS = ("rnn_fwd", "rnn_bwd", "lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says why and what to use."""


def _sum_over_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # aᵀ @ b for a [R, M], b [R, N]: a weight gradient, a sum over T·B rows
    return a.t() @ b


def _triton_refuses(device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype not in TRITON_DTYPES:
        return (
            f"backend 'triton' computes in float32 and stores {', '.join(map(str, TRITON_DTYPES))}; got "
            f"{dtype}: use backend='reference' for it"
        )
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return (
            f"backend 'triton' needs CUDA tensors (got tensors on {device}), or TRITON_INTERPRET=1 "
            "set before triton is imported to run the kernels on the CPU"
        )
    return None


def _cpu_refuses(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cpu":
        return f"backend 'cpu' runs CPU tensors, got tensors on {device}: use 'auto' or 'reference'"
    return None


def _reference_refuses(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """One backend: what it is, which calls it takes, what it offers.

    Attributes:
        name: what ``backend=`` says.
        modules: the modules that hold its six functions (a function is looked up in each in turn).
        refuses: (device, dtype) -> None when it takes a call on such tensors, else why not.
        auto: (device, dtype) -> whether ``"auto"`` picks it (first in `BACKENDS` order).
        gate_major: the cells whose backward returns dgx gate-major (a [T, B, D, G] view of a dense
            [D, G, T, B]), which the weight gradients' products read as it lies.
        switches: the environment variables that change it.
    """

    name: str
    modules: tuple[str, ...]
    refuses: Callable[[torch.device, torch.dtype], str | None]
    auto: Callable[[torch.device, torch.dtype], bool]
    gate_major: tuple[str, ...] = ()
    switches: tuple[str, ...] = ()

    def functions(self) -> types.SimpleNamespace:
        """The six functions and ``name``, plus ``linear``, ``sum_over_rows``, ``layer_stack`` and
        ``cell_step`` (None where it has none); `BackendUnavailableError` where they do not import."""
        try:
            modules = [importlib.import_module(m) for m in self.modules]
        except ImportError as err:
            raise BackendUnavailableError(
                f"backend {self.name!r} is not available: {err}; use backend='reference', which runs anywhere"
            ) from err

        def find(name: str, default=None):
            return next((getattr(m, name) for m in modules if hasattr(m, name)), default)

        return types.SimpleNamespace(
            name=self.name,
            **{op: find(op) for op in OPS},
            linear=find("linear", F.linear),
            sum_over_rows=find("sum_over_rows", _sum_over_rows),
            layer_stack=find("layer_stack"),
            cell_step=find("cell_step"),
        )


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "triton",
            ("kernels.rnn", "kernels.lstm", "kernels.gru"),
            _triton_refuses,
            auto=lambda device, dtype: (
                device.type == "cuda" and dtype in TRITON_DTYPES and triton_available()
            ),
            switches=("TRITON_INTERPRET",),
        ),
        Backend(
            "cpu",
            ("kernels.cpu",),
            _cpu_refuses,
            auto=lambda device, dtype: device.type == "cpu",
            gate_major=("lstm",),
            switches=("RNNKIT_ONEDNN", "RNNKIT_CPU_STEP", "RNNKIT_CPU_POOL_MB"),
        ),
        Backend("reference", ("kernels.reference",), _reference_refuses, auto=lambda device, dtype: True),
    )
}
NAMES = ("auto", *BACKENDS)


def check_backend_name(backend: str, *, source: str = "backend") -> str:
    if backend not in NAMES:
        raise ValueError(f"{source}: expected one of {', '.join(map(repr, NAMES))}, got {backend!r}")
    return backend


_FUNCTIONS: dict[str, types.SimpleNamespace] = {}


def functions(name: str) -> types.SimpleNamespace:
    """The functions of backend ``name`` (see `Backend.functions`), imported once."""
    if name not in _FUNCTIONS:
        _FUNCTIONS[name] = BACKENDS[name].functions()
    return _FUNCTIONS[name]


def triton_available() -> bool:
    """True when the Triton kernels import (they exist, and triton is installed)."""
    try:
        functions("triton")
    except BackendUnavailableError:
        return False
    return True


def backend_name(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The backend that runs tensors of ``dtype`` on ``device``.

    Args:
        backend: "auto" or a backend's name (`BACKENDS`).
        device: where the input lives. dtype: the input's dtype.

    Raises:
        BackendUnavailableError: the backend asked for cannot run such tensors here.

    Example:
        >>> backend_name("auto", torch.device("cpu"))
        'cpu'
    """
    check_backend_name(backend)
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            backend = check_backend_name(env, source=ENV_VAR)
    if backend == "auto":
        return next(b.name for b in BACKENDS.values() if b.auto(device, dtype))
    reason = BACKENDS[backend].refuses(device, dtype)
    if reason is not None:
        raise BackendUnavailableError(reason)
    functions(backend)  # a clear error where its modules do not import
    return backend


def chosen(backend: str, x: torch.Tensor) -> types.SimpleNamespace:
    """The functions of the backend that runs ``x`` (`backend_name`'s rule)."""
    return functions(backend_name(backend, x.device, x.dtype))
