"""Which implementation runs the recurrence: chosen once per call, explicitly.

- ``"reference"``: `kernels.reference`, plain PyTorch ops, any device.
- ``"triton"``: the fused Triton kernels (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
- ``"auto"``: Triton for CUDA tensors when the kernels are available, the reference otherwise.
  The environment variable ``RNNKIT_BACKEND`` (``triton`` or ``reference``) replaces what
  ``auto`` would pick; an explicit ``backend=`` argument always wins.

Every backend is a namespace with the functions of `kernels.reference` and the same
signatures: ``rnn_fwd``, ``rnn_bwd``, ``lstm_fwd``, ``lstm_bwd``, ``gru_fwd``, ``gru_bwd``; `rnnkit.ops`
registers them as operators, and `rnnkit.ops.operators_for` is the one lookup a call makes.
"""

from __future__ import annotations

import importlib
import os
import types

import torch

from kernels import TRITON_DTYPES  # re-exported: where the layers choose a backend

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "RNNKIT_BACKEND"
# the Triton kernel modules
_TRITON_MODULES = ("kernels.rnn", "kernels.lstm", "kernels.gru")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says why and what to use."""


def check_backend_name(backend: str, *, source: str = "backend") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{source}: expected one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return backend


_OPS = ("rnn_fwd", "rnn_bwd", "lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd")


def triton_functions() -> types.SimpleNamespace:
    """The six Triton launchers (`kernels.rnn`, `lstm`, `gru`) and ``name``; raises
    `BackendUnavailableError` where they do not import."""
    try:
        modules = {name: importlib.import_module(name) for name in _TRITON_MODULES}
    except ImportError as err:
        raise BackendUnavailableError(
            f"backend 'triton' is not available: {err}; use backend='reference', which runs anywhere"
        ) from err
    ops = {op: getattr(modules[f"kernels.{op.split('_')[0]}"], op) for op in _OPS}
    return types.SimpleNamespace(name="triton", **ops)


def reference_functions() -> types.SimpleNamespace:
    """The six functions of `kernels.reference` and ``name``."""
    from kernels import reference

    return types.SimpleNamespace(name="reference", **{op: getattr(reference, op) for op in _OPS})


def triton_available() -> bool:
    """True when the Triton kernels import (they exist, and triton is installed)."""
    try:
        triton_functions()
    except BackendUnavailableError:
        return False
    return True


def backend_name(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The backend ("reference" or "triton") that runs tensors of ``dtype`` on ``device``.

    Args:
        backend: "auto", "triton" or "reference".
        device: where the input lives. dtype: the input's dtype (the kernels compute in fp32, so
            float64 runs on the reference; asking for "triton" with it is an error).

    Raises:
        BackendUnavailableError: "triton" was asked for where it cannot run.

    Example:
        >>> backend_name("auto", torch.device("cpu"))
        'reference'
    """
    check_backend_name(backend)
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            backend = check_backend_name(env, source=ENV_VAR)
    if backend == "auto":
        on_gpu = device.type == "cuda" and dtype in TRITON_DTYPES
        backend = "triton" if on_gpu and triton_available() else "reference"
    if backend == "reference":
        return backend
    if dtype not in TRITON_DTYPES:
        raise BackendUnavailableError(
            f"backend 'triton' computes in float32 and stores {', '.join(map(str, TRITON_DTYPES))}; got "
            f"{dtype}: use backend='reference' for it"
        )
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailableError(
            f"backend 'triton' needs CUDA tensors (got tensors on {device}), or TRITON_INTERPRET=1 "
            "set before triton is imported to run the kernels on the CPU"
        )
    triton_functions()  # a clear error where the kernels do not import
    return backend
