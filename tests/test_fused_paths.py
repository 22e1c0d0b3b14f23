"""Where torch's own fused recurrence stands in for rnnkit's recurrence in the CPU backend (layers at
inference, cells always), it gives the explicit recurrence's numbers, and it never stands in where
rnnkit's recurrence is needed (a gradient, the record, dropout, autocast, the Triton kernels)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import functional, modules
from tests._testing import assert_close

LAYERS = {
    "RNN": dict(nonlinearity="tanh"),
    "RNN-relu": dict(nonlinearity="relu"),
    "LSTM": {},
    "LSTM-proj": dict(proj_size=5),
    "GRU": {},
}


class _Paths:
    """Counts which recurrence ran: rnnkit's explicit layers or torch's fused one."""

    def __init__(self, monkeypatch):
        self.explicit = self.fused = 0
        explicit, fused = modules._RecurrentLayer._layers, modules._RecurrentLayer._fused_inference

        def count_explicit(layer, *args):
            self.explicit += 1
            return explicit(layer, *args)

        def count_fused(layer, *args):
            out = fused(layer, *args)
            self.fused += out is not None
            return out

        monkeypatch.setattr(modules._RecurrentLayer, "_layers", count_explicit)
        monkeypatch.setattr(modules._RecurrentLayer, "_fused_inference", count_fused)


def _layer(name: str, dtype: torch.dtype, **kwargs) -> torch.nn.Module:
    cls = getattr(rnnkit, name.split("-")[0])
    torch.manual_seed(0)
    return cls(7, 9, num_layers=2, **LAYERS[name], **kwargs).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_inference_takes_torchs_recurrence_with_rnnkits_numbers(monkeypatch, name, bidirectional, dtype):
    """No gradient asked for: torch's fused recurrence, equal to rnnkit's explicit one (run with a
    gradient) for plain, padded-with-lengths and packed batches, with and without initial states."""
    layer = _layer(name, dtype, bidirectional=bidirectional).eval()
    paths = _Paths(monkeypatch)
    T, B = 6, 4
    x = torch.randn(T, B, 7, dtype=dtype)
    lengths = torch.tensor([6, 2, 5, 1])
    rows, P = 2 * (2 if bidirectional else 1), 5 if name == "LSTM-proj" else 9
    h0 = torch.randn(rows, B, P, dtype=dtype)
    hx = (h0, torch.randn(rows, B, 9, dtype=dtype)) if name.startswith("LSTM") else h0
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    for args, kwargs in [((x,), {}), ((x, hx), {}), ((x, hx), {"lengths": lengths}), ((packed,), {})]:
        with torch.no_grad():
            fused = layer(*args, **kwargs)
        assert (paths.fused, paths.explicit) == (1, 0)
        explicit = layer(*(a.detach().requires_grad_() if torch.is_tensor(a) else a for a in args), **kwargs)
        assert (paths.fused, paths.explicit) == (1, 1)
        paths.fused = paths.explicit = 0
        out_f, out_e = (o.data if hasattr(o, "batch_sizes") else o for o in (fused[0], explicit[0]))
        assert_close(f"{name} output {kwargs}", out_f, out_e)
        for f, e in zip(
            torch.utils._pytree.tree_leaves(fused[1]), torch.utils._pytree.tree_leaves(explicit[1])
        ):
            assert_close(f"{name} final state {kwargs}", f, e)


def test_inference_path_keeps_torch_nn_layouts(monkeypatch):
    """batch_first and unbatched input through the fused path, against torch.nn itself."""
    ours = rnnkit.LSTM(7, 9, batch_first=True)
    theirs = torch.nn.LSTM(7, 9, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    paths = _Paths(monkeypatch)
    with torch.no_grad():
        for x in (torch.randn(3, 5, 7), torch.randn(5, 7)):
            a, b = ours(x), theirs(x)
            assert_close("output", a[0], b[0])
            assert_close("h_n", a[1][0], b[1][0])
            assert_close("c_n", a[1][1], b[1][1])
    assert (paths.fused, paths.explicit) == (2, 0)


def test_rnnkits_recurrence_runs_where_it_is_needed(monkeypatch):
    """A gradient (even only the parameters'), dropout in training, autocast and bfloat16 keep the
    explicit recurrence; so does the per-step record, which needs a backward."""
    paths = _Paths(monkeypatch)
    layer = rnnkit.GRU(7, 9, num_layers=2, dropout=0.5)
    x = torch.randn(5, 3, 7)
    layer(x)  # the parameters ask for a gradient
    with torch.no_grad():
        layer.train()(x)  # dropout between the layers: its random mask is rnnkit's
        layer.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
        layer.to(torch.bfloat16)(x.bfloat16())
    assert (paths.fused, paths.explicit) == (0, 4)
    with torch.no_grad():
        layer.float()(x)
    assert (paths.fused, paths.explicit) == (1, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("cell", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_take_torchs_step_with_rnnkits_numbers(monkeypatch, cell, dtype):
    """On the CPU a cell steps with torch's own cell, forward and gradients equal to rnnkit's
    recurrence (the operator, as under torch.compile or with the Triton kernels)."""
    torch.manual_seed(0)
    ours = getattr(rnnkit, cell)(7, 9).to(dtype)
    x = torch.randn(4, 7, dtype=dtype, requires_grad=True)
    h = torch.randn(4, 9, dtype=dtype, requires_grad=True)
    hx = (h, torch.randn(4, 9, dtype=dtype, requires_grad=True)) if cell == "LSTMCell" else h
    calls = []
    cell_step, rnnkit_step = functional.cell_step, modules._RecurrentCell._rnnkit_step

    def backend_step(*args, **kwargs):
        out = cell_step(*args, **kwargs)
        calls.append("torch" if out is not None else "none")
        return out

    monkeypatch.setattr(functional, "cell_step", backend_step)
    monkeypatch.setattr(
        modules._RecurrentCell, "_rnnkit_step", lambda *a: calls.append("rnnkit") or rnnkit_step(*a)
    )
    results = []
    for use_op in (False, True):
        if use_op:  # rnnkit's operator, as a compiled graph would run it
            monkeypatch.setattr(functional, "cell_step", lambda *a, **k: calls.append("none"))
        out = ours(x, hx)
        leaves = torch.utils._pytree.tree_leaves(out)
        loss = sum((o * o).sum() for o in leaves)
        grads = torch.autograd.grad(loss, [x, *ours.parameters()])
        results.append((leaves, grads))
    assert calls == ["torch", "none", "rnnkit"]
    for a, b in zip(results[0][0] + list(results[0][1]), results[1][0] + list(results[1][1]), strict=True):
        assert_close(f"{cell}", a, b)


def test_cells_keep_their_checks_and_unbatched_form():
    cell = rnnkit.GRUCell(7, 9)
    with pytest.raises(ValueError, match="input"):
        cell(torch.randn(4, 6))
    assert cell(torch.randn(7)).shape == (9,)
    assert cell(torch.randn(7), torch.zeros(9)).shape == (9,)
