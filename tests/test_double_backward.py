"""Double backward (create_graph=True) through every layer and cell: a gradient penalty, a
Hessian-vector product. gradgradcheck in float64; the same numbers as torch.nn's own double backward
on the CPU; the Triton backend against the reference; the record still called."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from tests._testing import assert_close

f64 = torch.float64
LAYERS = [
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"proj_size": 2}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}),
    ("RNN", {"num_layers": 2}),
]
IDS = ["lstm-2-bi", "lstm-proj", "gru-2-bi", "rnn-relu-bi", "rnn-tanh-2"]


def _layer_fn(layer, packed):
    # (x, h0, weight_hh_l0) -> the output, through torch.func: the weight is an input of the check
    lengths = torch.tensor([3, 1])

    def fn(x, h0, w_hh):
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        hx = (
            (h0, torch.zeros_like(h0[..., :1]).expand(*h0.shape[:-1], layer.hidden_size))
            if layer.mode == "LSTM"
            else h0
        )
        out = torch.func.functional_call(layer, {"weight_hh_l0": w_hh}, (inp, hx))[0]
        return pad_packed_sequence(out, total_length=x.shape[0])[0] if packed else out

    return fn


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "lengths"])
@pytest.mark.parametrize("name, kw", LAYERS, ids=IDS)
def test_layers_pass_gradgradcheck(name, kw, packed, backend):
    torch.manual_seed(0)
    layer = getattr(rnnkit, name)(2, 3, backend=backend, **kw).to(f64)
    D, P = (2 if layer.bidirectional else 1), (layer.proj_size or 3) if name == "LSTM" else 3
    x = torch.randn(3, 2, 2, dtype=f64, requires_grad=True)
    h0 = torch.randn(layer.num_layers * D, 2, P, dtype=f64, requires_grad=True)
    w_hh = layer.weight_hh_l0.detach().clone().requires_grad_()
    assert torch.autograd.gradgradcheck(_layer_fn(layer, packed), (x, h0, w_hh))


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_pass_gradgradcheck_through_rnnkits_recurrence(monkeypatch, name):
    """The cells' own step (rnnkit's operator, as compiled or on the Triton kernels), not torch's
    fused cell."""
    from rnnkit import functional

    monkeypatch.setattr(functional, "cell_step", lambda *a, **k: None)
    torch.manual_seed(1)
    cell = getattr(rnnkit, name)(2, 3, backend="reference").to(f64)
    x = torch.randn(2, 2, dtype=f64, requires_grad=True)
    h = torch.randn(2, 3, dtype=f64, requires_grad=True)

    def fn(x, h):
        out = cell(x, (h, h * 0.5) if name == "LSTMCell" else h)
        return out[0] if name == "LSTMCell" else out

    assert torch.autograd.gradgradcheck(fn, (x, h))


def _penalty_grads(model, x):
    # a gradient penalty: the parameters' gradient of the squared norm of dL/dx
    y = model(x)[0]
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    return torch.autograd.grad(g.pow(2).sum(), list(model.parameters()))


@pytest.mark.parametrize("name, kw", LAYERS, ids=IDS)
def test_a_gradient_penalty_gives_torch_nns_numbers(name, kw):
    torch.manual_seed(2)
    theirs = getattr(nn, name)(3, 4, **kw).to(f64)
    ours = getattr(rnnkit, name)(3, 4, **kw).to(f64)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(6, 2, 3, dtype=f64, requires_grad=True)
    for i, (a, b) in enumerate(zip(_penalty_grads(ours, x), _penalty_grads(theirs, x), strict=True)):
        assert_close(f"{name} parameter {i}", a, b)


@pytest.mark.interpreter
@pytest.mark.parametrize("name, kw", LAYERS[:3], ids=IDS[:3])
def test_the_triton_backend_doubles_back_as_the_reference(name, kw):
    torch.manual_seed(3)
    ours = getattr(rnnkit, name)(3, 8, backend="triton", **kw)
    ref = getattr(rnnkit, name)(3, 8, backend="reference", **kw)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3, requires_grad=True)
    for i, (a, b) in enumerate(zip(_penalty_grads(ours, x), _penalty_grads(ref, x), strict=True)):
        assert_close(f"{name} parameter {i}", a, b, torch.float32)


def test_the_record_is_called_in_a_double_backward_too():
    layer = rnnkit.LSTM(3, 4).to(f64)
    records = []
    layer.register_step_grad_hook(lambda m, i, g: records.append(g.h.clone()))
    x = torch.randn(5, 2, 3, dtype=f64, requires_grad=True)
    layer(x)[0].pow(2).sum().backward()
    (g,) = torch.autograd.grad(layer(x)[0].pow(2).sum(), x, create_graph=True)
    assert len(records) == 2
    assert_close("the record with create_graph", records[1], records[0])
    g.sum().backward()


def test_a_gradient_penalty_in_float32_with_the_cpu_backends_products():
    """fp32 at a size where the CPU backend's input projection runs on oneDNN (or into its pool):
    its backward is differentiable too when a graph is asked for."""
    from kernels.cpu import _onednn

    torch.manual_seed(4)
    T, B, I, H = 50, 32, 64, 128
    assert T * B * I * 4 * H >= _onednn.ONEDNN_MIN_FLOP  # the oneDNN-sized product, where it is used
    theirs = nn.LSTM(I, H)
    ours = rnnkit.LSTM(I, H)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, I, requires_grad=True)
    for i, (a, b) in enumerate(zip(_penalty_grads(ours, x), _penalty_grads(theirs, x), strict=True)):
        assert_close(f"parameter {i}", a, b, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("name, kw", LAYERS, ids=IDS)
def test_a_gradient_penalty_on_the_gpu_gives_torch_nns_numbers(name, kw):
    """On a GPU, every backend rnnkit runs there (Triton; the reference) against torch.nn's own
    double backward with cuDNN off (cuDNN's RNN backward has no derivative), fp32 with IEEE
    products on both sides."""
    torch.manual_seed(5)
    theirs = getattr(nn, name)(16, 32, **kw).cuda()
    x = torch.randn(20, 8, 16, device="cuda", requires_grad=True)
    with torch.backends.cudnn.flags(enabled=False):
        want = _penalty_grads(theirs, x)
    for backend in ("triton", "reference"):
        ours = getattr(rnnkit, name)(16, 32, backend=backend, **kw).cuda()
        ours.load_state_dict(theirs.state_dict())
        with torch.backends.cudnn.flags(enabled=False, allow_tf32=False):
            got = _penalty_grads(ours, x)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_close(f"{backend} {name} parameter {i}", a, b, torch.float32)
