"""The reference recurrences: gradcheck in float64, per-step gradient record against autograd,
lengths semantics, low-precision storage, inference mode."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from kernels import reference
from rnnkit import functional
from tests._naive import naive_layer
from tests._testing import OpCalls, assert_close

f64 = {"dtype": torch.float64}


def recurrence_inputs(cell: str, T=4, B=3, D=2, H=2, P=None, dtype=torch.float64, scale=0.5):
    """Random differentiable inputs of functional.<cell>: (args, kwargs)."""
    G = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "lstm_proj": 4, "gru": 3}[cell]
    P = P or H
    gx = torch.randn(T, B, D, G * H, dtype=dtype)
    w_hh = torch.randn(D, G * H, P, dtype=dtype) * scale
    h0 = torch.randn(D, B, P, dtype=dtype)
    if cell.startswith("rnn"):
        return "rnn", [gx, w_hh, h0], {"nonlinearity": cell[4:]}
    if cell == "gru":
        return "gru", [gx, w_hh, torch.randn(D, H, dtype=dtype), h0], {}
    c0 = torch.randn(D, B, H, dtype=dtype)
    if cell == "lstm_proj":
        return "lstm", [gx, w_hh, h0, c0], {"w_hr": torch.randn(D, P, H, dtype=dtype) * scale}
    return "lstm", [gx, w_hh, h0, c0], {}


CELL_NAMES = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("lengths", [None, [3, 1, 4]], ids=["full", "lengths"])
def test_gradcheck(cell, D, lengths):
    P = 3 if cell == "lstm_proj" else None
    fn, args, kwargs = recurrence_inputs(cell, D=D, P=P)
    if cell == "rnn_relu":  # keep pre-activations away from relu's kink at 0
        args[0] = args[0] + torch.sign(args[0]) * 0.5
    tensors = [t.requires_grad_() for t in args] + [
        t.requires_grad_() for t in kwargs.values() if torch.is_tensor(t)
    ]
    n_args = len(args)

    def run(*ts):
        kw = dict(kwargs)
        if "w_hr" in kw:
            kw["w_hr"] = ts[n_args]
        return getattr(functional, fn)(*ts[:n_args], lengths=lengths, backend="reference", **kw)

    assert torch.autograd.gradcheck(run, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_lengths_equal_separate_sequences(cell):
    """A batch with lengths equals running each sequence alone, truncated to its length."""
    fn, args, kwargs = recurrence_inputs(cell, T=6, B=4, D=2, H=5)
    lengths = torch.tensor([6, 2, 1, 4])
    fwd = getattr(reference, f"{fn}_fwd")
    if fn == "lstm":
        kwargs["lengths"] = lengths
        gx, w_hh, h0, c0 = args
        out = fwd(gx, w_hh, h0, c0, **kwargs)
        for b, n in enumerate(lengths.tolist()):
            alone = fwd(gx[:n, b : b + 1], w_hh, h0[:, b : b + 1], c0[:, b : b + 1])
            assert_close(f"y[:{n}, {b}]", out.y[:n, b], alone.y[:, 0])
            assert_close(f"h_n[:, {b}]", out.h_n[:, b], alone.h_n[:, 0])
            assert_close(f"c_n[:, {b}]", out.c_n[:, b], alone.c_n[:, 0])
            assert torch.all(out.y[n:, b] == 0), f"y[{n}:, {b}] past the length is not zero"
        return
    extra = args[2:-1]  # GRU's b_hn
    gx, w_hh, h0 = args[0], args[1], args[-1]
    out = fwd(gx, w_hh, *extra, h0, lengths, **kwargs)
    for b, n in enumerate(lengths.tolist()):
        alone = fwd(gx[:n, b : b + 1], w_hh, *extra, h0[:, b : b + 1], **kwargs)
        assert_close(f"y[:{n}, {b}]", out.y[:n, b], alone.y[:, 0])
        assert_close(f"h_n[:, {b}]", out.h_n[:, b], alone.h_n[:, 0])
        assert torch.all(out.y[n:, b] == 0), f"y[{n}:, {b}] past the length is not zero"


def test_previous_states():
    steps = torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 2, 2, 1).contiguous()  # t+1 at step t
    steps[3:, 1] = 0  # sequence 1 has length 3
    init = torch.full((2, 2, 1), -1.0)
    prev = reference.previous_states(steps, init, torch.tensor([4, 3]))
    assert prev[:, 0, 0, 0].tolist() == [-1, 1, 2, 3]  # forward: the step before, init at t=0
    assert prev[:, 0, 1, 0].tolist() == [2, 3, 4, -1]  # reverse: the step after, init at t=3
    assert prev[:3, 1, 1, 0].tolist() == [2, 3, -1]  # reverse, length 3: init at t=2


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_record_equals_autograd(name):
    """The recorded dL/dh_t (and dL/dc_t) equal autograd's gradient of every step's state."""
    module = getattr(rnnkit, name)(3, 5, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 4, 3, **f64)
    lengths = torch.tensor([6, 3, 1, 5])
    g_out, g_h, g_c = torch.randn(6, 4, 10, **f64), torch.randn(2, 4, 5, **f64), torch.randn(2, 4, 5, **f64)

    recorded = []
    handle = module.register_step_grad_hook(lambda m, layer, grads: recorded.append((layer, grads)))
    out, state = module(x, lengths=lengths)
    h_n, c_n = state if name == "LSTM" else (state, None)
    loss = (out * g_out).sum() + (h_n * g_h).sum() + (0 if c_n is None else (c_n * g_c).sum())
    loss.backward()
    handle.remove()
    assert [layer for layer, _ in recorded] == [0]
    grads = recorded[0][1]
    assert grads.h.shape == (6, 4, 2, 5) and grads.h.dtype == torch.float64
    assert torch.equal(grads.lengths, lengths)

    out_naive, finals, steps = naive_layer(module, x, lengths)
    loss = (out_naive * g_out).sum() + sum((h * g_h[d]).sum() for d, (h, _) in enumerate(finals))
    if name == "LSTM":
        loss = loss + sum((c * g_c[d]).sum() for d, (_, c) in enumerate(finals))
    loss.backward()
    assert_close("output", out, out_naive)
    for d, (h_steps, c_steps) in enumerate(steps):
        for t in range(6):
            assert_close(f"dL/dh[t={t}, d={d}]", grads.h[t, :, d], h_steps[t].grad)
            if name == "LSTM":
                assert_close(f"dL/dc[t={t}, d={d}]", grads.c[t, :, d], c_steps[t].grad)
            else:
                assert grads.c is None


def test_record_hooks_per_layer_and_removal():
    module = rnnkit.GRU(3, 4, num_layers=3)
    calls = []
    handle = module.register_step_grad_hook(lambda m, layer, grads: calls.append((m, layer)))
    module(torch.randn(5, 2, 3))[0].sum().backward()
    assert sorted(layer for _, layer in calls) == [0, 1, 2]
    assert all(m is module for m, _ in calls)
    handle.remove()
    calls.clear()
    module(torch.randn(5, 2, 3))[0].sum().backward()
    assert calls == []


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_storage(cell, dtype):
    """Storage in bf16/fp16, math in fp32: equal to the fp32 recurrence on the same rounded inputs."""
    P = 3 if cell == "lstm_proj" else None
    fn, args, kwargs = recurrence_inputs(cell, T=5, B=3, D=2, H=16, P=P, dtype=torch.float32)
    low = [a.to(dtype) for a in args]
    low_kw = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    high = [a.float() for a in low]
    high_kw = {k: v.float() if torch.is_tensor(v) else v for k, v in low_kw.items()}
    results = []
    for ts, kw in ((low, low_kw), (high, high_kw)):
        ts = [t.clone().requires_grad_() for t in ts]
        kw = {k: v.clone().requires_grad_() if torch.is_tensor(v) else v for k, v in kw.items()}
        outs = getattr(functional, fn)(*ts, backend="reference", **kw)
        gen = torch.Generator().manual_seed(3)
        sum((o.float() * torch.randn(o.shape, generator=gen)).sum() for o in outs).backward()
        named = {f"out{i}": o for i, o in enumerate(outs)}
        named.update({f"grad_arg{i}": t.grad for i, t in enumerate(ts)})
        named.update({f"grad_{k}": v.grad for k, v in kw.items() if torch.is_tensor(v)})
        results.append(named)
    for name, value in results[1].items():
        assert results[0][name].dtype == dtype, f"{name}: dtype {results[0][name].dtype}, expected {dtype}"
        assert_close(name, results[0][name].float(), value, dtype)


def test_inference_saves_nothing(monkeypatch):
    from rnnkit import ops

    ops.backend_ops("cpu")  # registered on first use
    module = rnnkit.LSTM(3, 4)
    with OpCalls("cpu_lstm_fwd") as calls:
        with torch.no_grad():
            out, _ = module(torch.randn(5, 2, 3))  # torch's fused recurrence: no operator at all
        assert not out.requires_grad and not calls.args
        monkeypatch.setattr(functional, "layer_stack", lambda *a, **k: None)  # rnnkit's, as when compiled
        with torch.no_grad():
            module(torch.randn(5, 2, 3))
        module(torch.randn(5, 2, 3))
    assert [args[-3] for args in calls.args] == [False, True]  # the training flag
    out = reference.lstm_fwd(torch.randn(3, 2, 1, 16), torch.randn(1, 16, 4), training=False)
    assert out.gates is None and out.c_steps is None
