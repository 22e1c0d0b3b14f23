"""The Triton kernels on a GPU at realistic shapes, and rnnkit.LSTM(backend="triton") against
torch.nn.LSTM (cuDNN). Skipped without CUDA; run them when a GPU machine is lent."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnkit
from kernels import reference
from tests._testing import assert_close, compare_outputs, kernel_module, make_inputs, run_backward

pytestmark = pytest.mark.cuda

# (T, B, H): large batch, long sequence with a small batch, large hidden
SHAPES = [(100, 256, 256), (1000, 8, 128), (200, 16, 1024)]


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "lstm_proj", "gru"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-H{}".format(*s))
def test_kernel_matches_reference_on_gpu(poisoned, cell, shape):
    T, B, H = shape
    args, kwargs, upstream = make_inputs(cell, T, B, 2, H, with_state=True, with_lengths=True)
    name = cell.split("_")[0]
    ours_mod = kernel_module(cell)
    fwd_ref = getattr(reference, f"{name}_fwd")(*args, **kwargs)
    compare_outputs("fwd.", getattr(ours_mod, f"{name}_fwd")(*args, **kwargs), fwd_ref, torch.float32)
    ref = run_backward(reference, cell, args, kwargs, fwd_ref, upstream, True)
    ours = run_backward(ours_mod, cell, args, kwargs, fwd_ref, upstream, True)
    compare_outputs("bwd.", ours, ref, torch.float32)


@pytest.mark.parametrize("proj_size", [0, 64])
def test_triton_lstm_matches_cudnn(proj_size):
    theirs = nn.LSTM(128, 256, num_layers=2, bidirectional=True, proj_size=proj_size).cuda()
    ours = rnnkit.LSTM(
        128, 256, num_layers=2, bidirectional=True, proj_size=proj_size, backend="triton"
    ).cuda()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(100, 32, 128, device="cuda")
    results = []
    for model in (theirs, ours):
        xi = x.clone().requires_grad_()
        out, (h, c) = model(xi)
        (out.square().mean() + h.sum() + c.sum()).backward()
        named = {"output": out, "h_n": h, "c_n": c, "grad_input": xi.grad}
        named.update({f"grad_{n}": p.grad for n, p in model.named_parameters()})
        results.append(named)
    for name, value in results[0].items():
        assert_close(name, results[1][name], value, torch.float32)
