"""How rnnkit layers work with the rest of PyTorch: autocast, eval-mode backward, determinism,
activation checkpointing (more in issue #8: torch.compile, torch.export, Captum)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import rnnkit
from tests._testing import assert_close

LAYERS = ["RNN", "LSTM", "GRU"]


@pytest.mark.parametrize("name", LAYERS)
def test_cpu_autocast_bf16_like_torch_nn(name):
    """Every rnnkit layer computes in the autocast dtype (torch.nn's CPU GRU stays in float32
    there, its RNN and LSTM do not); the values agree to bf16's tolerance."""
    ours = getattr(rnnkit, name)(4, 16, num_layers=2, bidirectional=True)
    theirs = getattr(nn, name)(4, 16, num_layers=2, bidirectional=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(6, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = ours(x)
        out_t, state_t = theirs(x)
    h, h_t = (state[0], state_t[0]) if name == "LSTM" else (state, state_t)
    assert out.dtype == h.dtype == torch.bfloat16
    if name != "GRU":
        assert out_t.dtype == h_t.dtype == torch.bfloat16
    assert_close("output", out.float(), out_t.float(), torch.bfloat16)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


def test_cpu_autocast_cell():
    cell = rnnkit.GRUCell(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = cell(torch.randn(3, 4))
    assert h.dtype == torch.bfloat16


@pytest.mark.parametrize("name", LAYERS)
def test_backward_in_eval_mode(name):
    """cuDNN refuses backward in eval mode; rnnkit computes it (attribution tools need it)."""
    model = getattr(rnnkit, name)(3, 5, num_layers=2, dropout=0.5).eval()
    x = torch.randn(4, 2, 3, requires_grad=True)
    model(x)[0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", LAYERS)
def test_gradients_are_bitwise_repeatable(name):
    model = getattr(rnnkit, name)(5, 7, num_layers=2, bidirectional=True)
    x = torch.randn(9, 4, 5)
    grads = []
    for _ in range(2):
        model.zero_grad()
        model(x, lengths=torch.tensor([9, 3, 6, 1]))[0].square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_activation_checkpointing_gives_the_same_gradients():
    model = rnnkit.LSTM(3, 6, num_layers=2)
    x = torch.randn(5, 2, 3)
    model(x)[0].sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    checkpoint(lambda inp: model(inp)[0], x, use_reentrant=False).sum().backward()
    for name_p, got, want in zip(
        (n for n, _ in model.named_parameters()), (p.grad for p in model.parameters()), expected
    ):
        assert_close(name_p, got, want, torch.float32)
