"""rnnkit's cells against torch.nn's: one step, every output and gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnkit
from tests._testing import assert_close

CELLS = {
    "rnn_tanh": ("RNNCell", {}),
    "rnn_relu": ("RNNCell", {"nonlinearity": "relu"}),
    "lstm": ("LSTMCell", {}),
    "gru": ("GRUCell", {}),
}


def step(cell: nn.Module, x: torch.Tensor, hx):
    x = x.clone().requires_grad_()
    hx = None if hx is None else tuple(h.clone().requires_grad_() for h in hx)
    out = cell(x) if hx is None else cell(x, hx if isinstance(cell, nn.LSTMCell) else hx[0])
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(5)
    sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() for o in outs).backward()
    result = {f"out{i}": o for i, o in enumerate(outs)}
    result["grad_input"] = x.grad
    for i, h in enumerate(hx or ()):
        result[f"grad_hx{i}"] = h.grad
    result.update({f"grad_{n}": p.grad for n, p in cell.named_parameters()})
    return result


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "zero-state"])
@pytest.mark.parametrize("size", [(1, 1, 1), (5, 3, 51)], ids=["B1-I1-H1", "B5-I3-H51"])
def test_cell_matches_torch(cell, bias, batched, with_hx, size):
    B, I, H = size
    name, extra = CELLS[cell]
    theirs = getattr(nn, name)(I, H, bias=bias, dtype=torch.float64, **extra)
    ours = getattr(rnnkit, name)(I, H, bias=bias, dtype=torch.float64, backend="reference", **extra)
    ours.load_state_dict(theirs.state_dict())
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=torch.float64)
    hx = None
    if with_hx:
        hx = tuple(torch.randn(*lead, H, dtype=torch.float64) for _ in range(2 if cell == "lstm" else 1))
    a, b = step(ours, x, hx), step(theirs, x, hx)
    assert a.keys() == b.keys()
    for key in b:
        assert_close(key, a[key], b[key])
