"""Backend choice: explicit argument, RNNKIT_BACKEND, auto, and clear errors."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.backends import BackendUnavailableError, backend_name, reference_functions

cpu = torch.device("cpu")


def test_auto_picks_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("RNNKIT_BACKEND", raising=False)
    assert backend_name("auto", cpu) == "reference"


def test_env_overrides_auto_only(monkeypatch):
    monkeypatch.setenv("RNNKIT_BACKEND", "reference")
    assert backend_name("auto", cpu) == "reference"
    monkeypatch.setenv("RNNKIT_BACKEND", "fastest")
    with pytest.raises(
        ValueError, match=r"RNNKIT_BACKEND: expected one of 'auto', 'triton', 'reference', got 'fastest'"
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


def test_reference_backend_has_every_function():
    ops = reference_functions()
    for name in ("rnn_fwd", "rnn_bwd", "lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd"):
        assert callable(getattr(ops, name))


def test_float64_never_runs_on_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(
        BackendUnavailableError, match=r"backend 'triton' computes in float32.*got torch.float64"
    ):
        backend_name("triton", cpu, torch.float64)
    assert backend_name("auto", torch.device("cuda"), torch.float64) == "reference"
