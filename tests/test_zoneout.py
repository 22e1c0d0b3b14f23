"""Zoneout of the LSTM's cell state (`rnnkit.zoneout`, the layers' ``cell_zoneout``): the training
recurrence of every backend, on the shifted pre-activations, is zoneout's, every output and gradient
against zoneout written out step by step; inference is its expectation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit import functional, zoneout
from rnnkit.models import make_layer
from tests._testing import DEVICE, assert_close


def _zoneout_loop(gx, w_hh, h0, c0, zoned, w_hr=None, lengths=None):
    # zoneout as the paper writes it, one step at a time in torch ops (autograd gives the gradients):
    # c_t = d c_{t-1} + (1 - d)(f c_{t-1} + i g), h_t = o tanh(c_t) (W_hr projects it), d = zoned
    T, _, D, _ = gx.shape
    ys, hs, cs = [], [], []
    for d in range(D):
        h, c = h0[d], c0[d]
        y = [None] * T
        for t in range(T) if d == 0 else reversed(range(T)):
            i, f, g, o = (gx[t, :, d] + h @ w_hh[d].T).chunk(4, dim=-1)
            candidate = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            keep = zoned[t, :, d].to(gx.dtype)
            c_new = keep * c + (1 - keep) * candidate
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            h_new = h_new if w_hr is None else h_new @ w_hr[d].T
            if lengths is not None:
                valid = (t < lengths)[:, None]
                h_new, c_new = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
                y[t] = torch.where(valid, h_new, 0.0)
            else:
                y[t] = h_new
            h, c = h_new, c_new
        ys.append(torch.stack(y))
        hs.append(h)
        cs.append(c)
    return torch.stack(ys, dim=2), torch.stack(hs), torch.stack(cs)


def _inputs(T, B, D, H, P, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device, dtype)

    tensors = {
        "gx": rand(T, B, D, 4 * H),
        "w_hh": rand(D, 4 * H, P, scale=0.4),
        "h0": rand(D, B, P),
        "c0": rand(D, B, H),
    }
    if P != H:
        tensors["w_hr"] = rand(D, P, H, scale=0.4)
    zoned = (torch.rand(T, B, D, H, generator=gen) < 0.3).to(device)
    return tensors, zoned


def _run(fn, tensors, seed=1):
    # fn(**leaves) -> (y, h_n, c_n); returns those and the gradient of every input, for fixed upstream
    # gradients
    leaves = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    outputs = fn(**leaves)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)).sum() for o in outputs)
    loss.backward()
    result = dict(zip(("y", "h_n", "c_n"), outputs, strict=True))
    result.update({f"grad_{k}": v.grad for k, v in leaves.items()})
    return result


CASES = [  # (backend, dtype, projection): the float32 CPU backend runs its C step
    pytest.param("reference", torch.float64, False, id="reference-f64"),
    pytest.param("reference", torch.float64, True, id="reference-f64-proj"),
    pytest.param("cpu", torch.float64, True, id="cpu-f64-proj"),
    pytest.param("cpu", torch.float32, False, id="cpu-f32"),
    pytest.param("triton", torch.float32, False, id="triton", marks=pytest.mark.interpreter),
    pytest.param("triton", torch.float32, True, id="triton-proj", marks=pytest.mark.interpreter),
]


# the interpreter computes σ(-2^14) as 1 / (1 + exp(2^14)) in numpy, whose exp warns of the inf (σ = 0)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("backend, dtype, projection", CASES)
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["dense", "lengths"])
def test_zoned_gates_run_zoneout_on_every_backend(backend, dtype, projection, lengths):
    """A backend's LSTM on `zone_gates`' pre-activations is zoneout with that mask: outputs, final
    states and the gradients of gx, W_hh, h0, c0 (and W_hr), both directions."""
    T, B, D, H = 5, 3, 2, 6
    P = 4 if projection else H
    tensors, zoned = _inputs(T, B, D, H, P, dtype, DEVICE)
    lens = None if lengths is None else torch.tensor(lengths, device=DEVICE)

    def ours(gx, w_hh, h0, c0, w_hr=None):
        gz = zoneout.zone_gates(gx, zoned)
        return functional.lstm(gz, w_hh, h0, c0, w_hr=w_hr, lengths=lens, backend=backend)

    def written_out(gx, w_hh, h0, c0, w_hr=None):
        return _zoneout_loop(gx, w_hh, h0, c0, zoned, w_hr, lens)

    got, want = _run(ours, tensors), _run(written_out, tensors)
    for name in want:
        assert_close(name, got[name], want[name], dtype)
    # zoned units: exactly no gradient reaches the input and forget gates' pre-activations
    dgx = got["grad_gx"].reshape(T, B, D, 4, H)
    assert (dgx[:, :, :, 0][zoned] == 0).all() and (dgx[:, :, :, 1][zoned] == 0).all()


@pytest.mark.parametrize("D", [1, 2])
def test_zone_gates_in_one_c_pass_are_torchs_sums(D):
    """fp32 on the CPU, zone_gates is one C pass: the same numbers as torch's sum, bit for bit, and
    the gradient passes to gx unchanged; elsewhere (float64, a strided gx) torch's ops run."""
    from kernels.cpu import _step as _cpu_step

    g = torch.Generator().manual_seed(D)
    gx = (torch.randn(6, 3, D, 4 * 5, generator=g) * 3).requires_grad_()
    zoned = zoneout.sample(gx, 0.4, generator=g)
    signs = torch.tensor([-zoneout.SATURATE, zoneout.SATURATE, 0.0, 0.0]).view(4, 1)
    want = gx.detach() + (zoned.unsqueeze(-2) * signs).view(gx.shape)
    got = zoneout.zone_gates(gx, zoned)
    assert torch.equal(got, want) and zoned.any() and not zoned.all()
    upstream = torch.randn(got.shape, generator=g)
    got.backward(upstream)
    assert torch.equal(gx.grad, upstream)
    c_pass = _cpu_step.zone_gates(gx.detach(), zoned, zoneout.SATURATE)
    if _cpu_step.library() is not None:
        assert c_pass is not None and torch.equal(c_pass, want)
    assert _cpu_step.zone_gates(gx.detach().double(), zoned, zoneout.SATURATE) is None
    strided = gx.detach().transpose(0, 1).contiguous().transpose(0, 1)
    assert _cpu_step.zone_gates(strided, zoned, zoneout.SATURATE) is None
    assert torch.equal(zoneout.zone_gates(strided, zoned), want)
    gx64 = gx.detach().double()
    want64 = gx64 + (zoned.unsqueeze(-2) * signs.double()).view(gx.shape)
    assert torch.equal(zoneout.zone_gates(gx64, zoned), want64)


@pytest.mark.parametrize("n", [1, 2, 7, 100_001])
def test_the_c_mask_draws_each_unit_alone_with_probability_p(n):
    """fp32 on the CPU, `sample` draws the mask in one C pass (SplitMix64 by unit). Each unit is True
    with probability p: the frequency within 5 standard errors; pairs of units (neighbours, the two
    halves of one 64-bit draw, the same unit at two steps) are True together at p², so no unit copies
    another; the same generator state draws the same mask, the next draw another; p 0 and 1 are
    never and always, one out of [0, 1] an error; float64 and a disabled library leave it to
    torch.rand."""
    from kernels.cpu import _step as _cpu_step

    if _cpu_step.library() is None:
        pytest.skip("no C compiler here: torch.rand draws every mask")
    g = torch.Generator().manual_seed(n)
    gx = torch.empty(n, 1, 1, 4)
    for p in (0.15, 0.5):
        mask = zoneout.sample(gx, p, generator=g).flatten()
        assert mask.dtype == torch.bool and mask.numel() == n
        if n < 1000:
            continue
        m = mask.double()
        assert abs(m.mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5
        half = (n + 1) // 2
        for a, b in ((m[:-1], m[1:]), (m[: n // 2], m[half : half + n // 2])):
            both = (a * b).mean().item()
            assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / a.numel()) ** 0.5, (p, both)
    assert not zoneout.sample(gx, 0.0, generator=g).any() and zoneout.sample(gx, 1.0, generator=g).all()
    state = g.get_state()
    first = zoneout.sample(gx, 0.3, generator=g)
    g.set_state(state)
    assert torch.equal(zoneout.sample(gx, 0.3, generator=g), first)
    if n > 1000:
        second = zoneout.sample(gx, 0.3, generator=g)
        assert not torch.equal(first, second)
        together = (first & second).double().mean().item()
        assert abs(together - 0.09) < 5 * (0.09 * 0.91 / n) ** 0.5
    for bad in (-0.1, 1.5, float("nan"), True):  # a probability out of [0, 1] is refused, not clamped
        with pytest.raises(ValueError, match=r"p: expected a probability in \[0, 1\], got"):
            zoneout.sample(gx, bad, generator=g)
    assert _cpu_step.bernoulli(gx.double(), (n,), 0.3) is None
    with _cpu_step.disabled():
        assert _cpu_step.bernoulli(gx, (n,), 0.3) is None
        g.set_state(state)
        by_torch = zoneout.sample(gx, 0.3, generator=g)
        g.set_state(state)
        assert torch.equal(by_torch, torch.rand(n, 1, 1, 1, generator=g) < 0.3)


def test_the_layer_zones_out_in_training_with_a_fresh_mask_every_step():
    """LSTM(cell_zoneout=p).train() is zoneout with the mask `sample` draws (about p of the units, a
    new draw at every step and for every sequence), every parameter's gradient included."""
    p = 0.4
    layer = rnnkit.LSTM(3, 40, bidirectional=True, cell_zoneout=p, backend="reference").double()
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    torch.manual_seed(11)
    out, (h_n, c_n) = layer(x)
    # the same draw again, from the same state of the generator
    torch.manual_seed(11)
    gx, _ = layer._input_projection(0, x)
    zoned = zoneout.sample(gx, p)
    assert abs(zoned.double().mean().item() - p) < 0.03
    assert not torch.equal(zoned[0], zoned[1]) and not torch.equal(zoned[:, 0], zoned[:, 1])
    w_hh = torch.stack([layer.weight_hh_l0, layer.weight_hh_l0_reverse])
    y, h, c = _zoneout_loop(gx, w_hh, torch.zeros(2, 5, 40).double(), torch.zeros(2, 5, 40).double(), zoned)
    assert_close("output", out, y.reshape(6, 5, 80))
    assert_close("h_n", h_n, h)
    assert_close("c_n", c_n, c)
    with torch.no_grad():
        assert not torch.equal(layer(x)[0], out), "two training forwards drew the same mask"


# the interpreter computes σ(-2^14) as 1 / (1 + exp(2^14)) in numpy, whose exp warns of the inf (σ = 0)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("backend, dtype, projection", CASES)
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["dense", "lengths"])
def test_the_expectation_runs_on_every_backend(backend, dtype, projection, lengths):
    """`functional.lstm(..., zoneout=p)` on a backend is zoneout's expectation written out step by
    step: outputs, final states and the gradients of gx, W_hh, h0, c0 (and W_hr), both directions."""
    T, B, D, H, p = 5, 3, 2, 6, 0.3
    P = 4 if projection else H
    tensors, _ = _inputs(T, B, D, H, P, dtype, DEVICE)
    lens = None if lengths is None else torch.tensor(lengths, device=DEVICE)

    def ours(gx, w_hh, h0, c0, w_hr=None):
        return functional.lstm(gx, w_hh, h0, c0, w_hr=w_hr, lengths=lens, backend=backend, zoneout=p)

    def written_out(gx, w_hh, h0, c0, w_hr=None):
        y, h_n, c_n, _ = _expectation_loop(gx, w_hh, p, w_hr, lens, h0, c0)
        return y, h_n, c_n

    got, want = _run(ours, tensors), _run(written_out, tensors)
    for name in want:
        assert_close(name, got[name], want[name], dtype)


@pytest.mark.parametrize("D", [1, 2])
def test_the_expectation_without_a_gradient_runs_the_c_step(monkeypatch, D):
    """fp32 on the CPU without a gradient or lengths, the CPU backend's forward runs the expectation
    in its C step (a validation pass): every output as its torch ops give it; with a backward to
    come (training=True) or lengths, torch's ops run."""
    from kernels import cpu
    from kernels.cpu import _step as _cpu_step

    lib = _cpu_step.library()
    if lib is None:
        pytest.skip("no C compiler here: torch's ops run every expectation")
    g = torch.Generator().manual_seed(D)
    T, B, H, p = 9, 5, 6, 0.3
    gx, w_hh = torch.randn(T, B, D, 4 * H, generator=g), torch.randn(D, 4 * H, H, generator=g) * 0.5
    h0, c0 = torch.randn(D, B, H, generator=g), torch.randn(D, B, H, generator=g)
    calls = []
    step = lib.rnnkit_lstm_fwd_step

    def counted(*args):
        calls.append(args[-1])  # keep, the zoneout probability
        return step(*args)

    monkeypatch.setattr(lib, "rnnkit_lstm_fwd_step", counted)
    for init in ((h0, c0), (None, None)):
        got = cpu.lstm_fwd(gx, w_hh, *init, training=False, zoneout=p)
        assert len(calls) == T and all(abs(k - p) < 1e-7 for k in calls), "the C step did not run"
        calls.clear()
        with _cpu_step.disabled():
            want = cpu.lstm_fwd(gx, w_hh, *init, training=False, zoneout=p)
        assert not calls
        for name, a, b in zip(("y", "h_n", "c_n"), got[:3], want[:3], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    cpu.lstm_fwd(gx, w_hh, h0, c0, training=True, zoneout=p)
    cpu.lstm_fwd(gx, w_hh, h0, c0, lengths=torch.full((B,), T), training=False, zoneout=p)
    assert not calls


def test_inference_is_the_expectation():
    """In eval mode the cell takes zoneout's expectation. One step from a given state, c_1 is linear in
    the mask, so the mean of c_1 over many training draws (4000 copies of one sequence in a batch) is
    the inference's c_1, within the sampling error."""
    p, B = 0.3, 4000
    layer = rnnkit.LSTM(2, 5, cell_zoneout=p, backend="reference").double()
    x = torch.randn(1, 1, 2, dtype=torch.float64).expand(1, B, 2)
    state = (torch.randn(1, 1, 5).double().expand(1, B, 5), torch.randn(1, 1, 5).double().expand(1, B, 5))
    torch.manual_seed(0)
    with torch.no_grad():
        c_train = layer.train()(x, state)[1][1]  # [1, B, 5]
        c_eval = layer.eval()(x, state)[1][1]
    assert torch.equal(c_eval, layer(x, state)[1][1].detach()), "inference is deterministic"
    spread = c_train.std(dim=1)
    err = (c_train.mean(dim=1) - c_eval[:, 0]).abs()
    assert (err <= 5 * spread / B**0.5 + 1e-12).all(), (err, spread)
    # and not the plain LSTM's: the cell keeps p of its state
    plain = nn.LSTM(2, 5).double()
    plain.load_state_dict(layer.state_dict())
    assert not torch.allclose(plain(x, state)[1][1], c_eval)


def _expectation_loop(gx, w_hh, p, w_hr=None, lengths=None, h0=None, c0=None):
    # zoneout's expectation as the paper writes it, c_t = p c_{t-1} + (1 - p)(f c_{t-1} + i g), one
    # step at a time; every step's h_t and c_t retain their gradient (the record's definition).
    # Returns y, h_n, c_n and the kept steps
    T, B, D, _ = gx.shape
    H, P = w_hh.shape[1] // 4, w_hh.shape[2]
    ys, hs, cs, kept = [], [], [], []
    for d in range(D):
        h = gx.new_zeros(B, P) if h0 is None else h0[d]
        c = gx.new_zeros(B, H) if c0 is None else c0[d]
        y = [None] * T
        for t in range(T) if d == 0 else reversed(range(T)):
            i, f, g, o = (gx[t, :, d] + h @ w_hh[d].T).chunk(4, dim=-1)
            c_new = p * c + (1 - p) * (torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g))
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            h_new = h_new if w_hr is None else h_new @ w_hr[d].T
            h_new.retain_grad()
            c_new.retain_grad()
            kept.append((t, d, h_new, c_new))
            if lengths is not None:
                valid = (t < lengths)[:, None]
                y[t] = torch.where(valid, h_new, 0.0)
                h_new, c_new = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
            else:
                y[t] = h_new
            h, c = h_new, c_new
        ys.append(torch.stack(y))
        hs.append(h)
        cs.append(c)
    return torch.stack(ys, dim=2), torch.stack(hs), torch.stack(cs), kept


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_the_expectation_records_every_step_gradient(bidirectional, proj_size, packed):
    """In eval mode the per-step record comes from the backend's recurrence, as in training: dL/dh_t
    and dL/dc_t of every step, as zoneout's expectation written out step by step gives them (zero
    past a length)."""
    torch.manual_seed(4)
    p, T, B = 0.3, 6, 3
    layer = (
        rnnkit.LSTM(2, 5, cell_zoneout=p, bidirectional=bidirectional, proj_size=proj_size).double().eval()
    )
    x = torch.randn(T, B, 2, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4]) if packed else None
    records = []
    handle = layer.register_step_grad_hook(lambda module, index, grads: records.append((index, grads)))
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    out = layer(inp)[0]
    out = pad_packed_sequence(out, total_length=T)[0] if packed else out
    weights = torch.randn(out.shape, dtype=torch.float64)
    (out * weights).sum().backward()
    handle.remove()
    assert [index for index, _ in records] == [0]
    grads = records[0][1]
    D, P = (2 if bidirectional else 1), (proj_size or 5)
    assert grads.h.shape == (T, B, D, P) and grads.c.shape == (T, B, D, 5)
    assert grads.h.dtype == grads.c.dtype == torch.float64  # the recurrence's compute dtype, as in training

    gx, _ = layer._input_projection(0, x)
    w_hh = torch.stack(layer._params(0, "weight_hh"))
    w_hr = torch.stack(layer._params(0, "weight_hr")) if proj_size else None
    y, _, _, kept = _expectation_loop(gx, w_hh, p, w_hr, lengths)
    (y.reshape(out.shape) * weights).sum().backward()
    for t, d, h, c in kept:
        assert_close(f"dL/dh, step {t} direction {d}", grads.h[t, :, d], h.grad)
        assert_close(f"dL/dc, step {t} direction {d}", grads.c[t, :, d], c.grad)
    if packed:
        assert (grads.h[4:, 2] == 0).all() and (grads.c[2:, 1] == 0).all()
    assert grads.c.abs().sum() > 0


def test_the_expectation_records_only_when_asked():
    """No gradient: no record; an inactive record (a hook removed between forward and backward) is
    not called; an active one once, by the backward."""
    layer = rnnkit.LSTM(2, 4, cell_zoneout=0.2).eval()
    x = torch.randn(3, 2, 2)
    calls = []

    class Recorder:
        active = True

        def __call__(self, grads):
            calls.append(grads)

    record = Recorder()
    gx, _ = layer._input_projection(0, x)
    w_hh = torch.stack(layer._params(0, "weight_hh"))
    with torch.no_grad():
        functional.lstm(gx, w_hh, zoneout=0.2, record=record)
    y = functional.lstm(gx, w_hh, zoneout=0.2, record=record)[0]
    record.active = False
    y.sum().backward()
    assert calls == []
    record.active = True
    y = functional.lstm(gx.detach(), w_hh, zoneout=0.2, record=record)[0]
    y.sum().backward()
    assert len(calls) == 1 and calls[0].h.abs().sum() > 0


def test_gate_activations_are_those_the_cell_applies():
    p = 0.25
    layer = rnnkit.LSTM(3, 4, cell_zoneout=p).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    acts = layer.gate_activations(x)[0]
    i, f = acts.gates[..., :4], acts.gates[..., 4:8]
    assert i.max() <= 1 - p and f.min() >= p
    with torch.no_grad():
        assert_close("y", acts.y.reshape(5, 2, 4), layer.eval()(x)[0])
    # what the cell applies from σ: i' = (1 - p) σ(a_i), f' = p + (1 - p) σ(a_f) (at the first step,
    # where the plain LSTM starts from the same state); zero past a length
    plain = rnnkit.LSTM(3, 4).double()
    plain.load_state_dict(layer.state_dict())
    sigma = plain.gate_activations(x)[0].gates
    assert_close("i'", i[0], (1 - p) * sigma[0, ..., :4])
    assert_close("f'", f[0], p + (1 - p) * sigma[0, ..., 4:8])
    assert_close("g, o", acts.gates[0, ..., 8:], sigma[0, ..., 8:])
    short = layer.gate_activations(x, lengths=[5, 3])[0].gates
    assert (short[3:, 1] == 0).all() and (short[:3, 1, :, 4:8] >= p).all()


def test_settings_and_errors():
    layer = rnnkit.LSTM(3, 4, cell_zoneout=0.2)
    assert "cell_zoneout=0.2" in repr(layer)
    nn.LSTM(3, 4).load_state_dict(layer.state_dict())  # the parameters stay torch's
    for p in (-0.1, 1.0, "0.2"):
        with pytest.raises(ValueError, match=r"cell_zoneout: expected a probability in \[0, 1\), got"):
            rnnkit.LSTM(3, 4, cell_zoneout=p)
    with pytest.raises(ValueError, match="cell_zoneout: only the LSTM has a cell state to zone out, got GRU"):
        rnnkit.GRU(3, 4, cell_zoneout=0.1)
    with pytest.raises(
        ValueError, match="cell_zoneout: only the LSTM has a cell state to zone out, got cell 'gru'"
    ):
        make_layer("gru", 3, 4, cell_zoneout=0.1)
    gx = torch.zeros(2, 1, 1, 8)
    with pytest.raises(ValueError, match=r"zoneout: expected a probability in \[0, 1\), got 1.0"):
        functional.lstm(gx, torch.zeros(1, 8, 2), zoneout=1.0)
    with pytest.raises(ValueError, match=r"zoned: expected a bool tensor of shape \[2, 1, 1, 2\]"):
        zoneout.zone_gates(gx, torch.zeros(2, 1, 1, 2))
    # the per-step record: from the recurrence, in training and (the expectation) in eval mode
    records = []
    layer.register_step_grad_hook(lambda m, i, g: records.append(g))
    x = torch.randn(5, 2, 3, requires_grad=True)
    layer.train()(x)[0].sum().backward()
    layer.eval()(x)[0].sum().backward()
    assert len(records) == 2 and all(g.h.shape == (5, 2, 1, 4) for g in records)
