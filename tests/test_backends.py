"""Backend choice: explicit argument, RNNKIT_BACKEND, auto, and clear errors."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.backends import BACKENDS, OPS, BackendUnavailableError, backend_name, functions

cpu = torch.device("cpu")


def test_auto_picks_the_cpu_backend_on_cpu(monkeypatch):
    monkeypatch.delenv("RNNKIT_BACKEND", raising=False)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert backend_name("auto", cpu, dtype) == "cpu"
    assert backend_name("reference", cpu) == "reference"


def test_env_overrides_auto_only(monkeypatch):
    monkeypatch.setenv("RNNKIT_BACKEND", "reference")
    assert backend_name("auto", cpu) == "reference"
    monkeypatch.setenv("RNNKIT_BACKEND", "fastest")
    with pytest.raises(
        ValueError,
        match=r"RNNKIT_BACKEND: expected one of 'auto', 'triton', 'cpu', 'reference', got 'fastest'",
    ):
        backend_name("auto", cpu)
    assert backend_name("reference", cpu) == "reference"  # an explicit argument wins


def test_unknown_backend_named_in_constructor():
    with pytest.raises(ValueError, match=r"backend: expected one of .*got 'cudnn'"):
        rnnkit.LSTM(3, 4, backend="cudnn")


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors"):
        rnnkit.GRU(3, 4, backend="triton")(torch.randn(2, 1, 3))


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_every_backend_has_the_references_six_functions(name):
    """Each backend's six functions have the reference's parameters, in order, with its defaults."""
    import inspect

    fns, reference = functions(name), functions("reference")
    for op in OPS:
        ours, theirs = inspect.signature(getattr(fns, op)), inspect.signature(getattr(reference, op))
        assert list(ours.parameters) == list(theirs.parameters), f"{name}.{op}: {ours} != {theirs}"
        for p, q in zip(ours.parameters.values(), theirs.parameters.values(), strict=True):
            assert (p.kind, p.default) == (q.kind, q.default), f"{name}.{op}: {p} != {q}"
    assert callable(fns.linear) and callable(fns.sum_over_rows)


def test_cpu_backend_refuses_other_devices():
    with pytest.raises(BackendUnavailableError, match=r"backend 'cpu' runs CPU tensors, got tensors on meta"):
        backend_name("cpu", torch.device("meta"))
    assert BACKENDS["cpu"].refuses(cpu, torch.float16) is None


def test_float64_never_runs_on_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(
        BackendUnavailableError, match=r"backend 'triton' computes in float32.*got torch.float64"
    ):
        backend_name("triton", cpu, torch.float64)
    assert backend_name("auto", torch.device("cuda"), torch.float64) == "reference"
