"""The Lyapunov spectrum: the QR method against closed forms, and rnnkit's layers stepped again."""

from __future__ import annotations

import math

import pytest
import torch

import rnnkit
from diagnostics.lyapunov import cell_step, lyapunov_exponents, lyapunov_spectrum, recurrences

F64 = torch.float64


def _linear(W: torch.Tensor):
    return lambda s, x: s @ W.T


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64)).Q


def test_linear_normal_recurrence_has_log_eigenvalue_moduli():
    """h_t = W h_{t-1} with a normal W (rotations scaled by 0.9, 0.7, 0.5, 0.3 in orthogonal
    coordinates): the exponents are log|eig(W)|, each twice (a rotation block's pair)."""
    moduli = torch.tensor([0.9, 0.7, 0.5, 0.3], dtype=F64)
    angles = torch.tensor([0.3, 1.1, 2.0, 0.7], dtype=F64)
    blocks = [
        m * torch.tensor([[a.cos(), -a.sin()], [a.sin(), a.cos()]])
        for m, a in zip(moduli, angles, strict=True)
    ]
    U = _orthogonal(8, 1)
    W = U @ torch.block_diag(*blocks) @ U.T
    assert torch.allclose(W @ W.T, W.T @ W, atol=1e-12)  # normal
    expected = torch.linalg.eigvals(W).abs().log().sort(descending=True).values
    g = torch.Generator().manual_seed(0)
    got = lyapunov_exponents(_linear(W), torch.randn(3, 8, dtype=F64), torch.zeros(400, 3), 8, generator=g)
    # a rotation pair's two exponents converge like 1/T (the pair's shared plane); the total exactly
    assert torch.allclose(got, expected.expand(3, 8), atol=0.01)
    assert torch.allclose(got.sum(1), expected.sum().expand(3), atol=1e-9)


def test_linear_symmetric_recurrence_is_exact():
    d = torch.tensor([1.5, 0.8, -0.6, 0.2, 0.05], dtype=F64)
    U = _orthogonal(5, 2)
    W = U @ torch.diag(d) @ U.T
    expected = d.abs().log().sort(descending=True).values[:3].expand(2, 3)
    state, steps = torch.randn(2, 5, dtype=F64), torch.zeros(200, 2)
    # a random start is off by O(1/T); after a warm-up that turns Q, exact to rounding
    assert torch.allclose(lyapunov_exponents(_linear(W), state, steps, 3), expected, atol=0.03)
    assert torch.allclose(lyapunov_exponents(_linear(W), state, steps, 3, warmup=60), expected, atol=1e-10)


def test_orthogonal_recurrence_with_identity_activation_has_zero_exponents():
    W = _orthogonal(16, 3)
    got = lyapunov_exponents(_linear(W), torch.randn(4, 16, dtype=F64), torch.zeros(300, 4), 16)
    assert got.abs().max() < 1e-10


def test_relu_rnn_with_identity_weights_keeps_every_perturbation():
    """rnnkit's relu RNN with W_hh = I, no input and a positive state is the identity map: all zeros
    (through the module path: gate_activations, recurrences, the cell step)."""
    rnn = rnnkit.RNN(3, 12, nonlinearity="relu")
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(torch.eye(12))
        for p in (rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.bias_hh_l0):
            p.zero_()
    h0 = torch.rand(1, 2, 12) + 0.5
    (spectrum,) = lyapunov_spectrum(rnn, torch.randn(50, 2, 3), h0, k=12)
    assert max(abs(v) for v in spectrum.exponents) < 1e-12
    assert spectrum.predicted_horizon is None and spectrum.time_scales[0] == math.inf


def test_tanh_with_small_weights_contracts():
    torch.manual_seed(0)
    rnn = rnnkit.RNN(4, 32)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.3)
    (spectrum,) = lyapunov_spectrum(rnn, torch.randn(100, 4, 4), k=4)
    assert spectrum.exponents[0] < 0
    assert spectrum.exponents == sorted(spectrum.exponents, reverse=True)
    # tanh' <= 1, so no exponent exceeds log σ_max(W)
    assert (
        spectrum.exponents[0] <= math.log(torch.linalg.matrix_norm(rnn.weight_hh_l0.double(), ord=2)) + 1e-9
    )


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_independent_of_the_qr_interval(cell):
    torch.manual_seed(1)
    layer = {"gru": rnnkit.GRU, "lstm": rnnkit.LSTM}[cell](3, 24)
    x = torch.randn(120, 2, 3)
    spectra = [
        lyapunov_spectrum(layer, x, k=8, interval=i, generator=torch.Generator().manual_seed(5))[0]
        for i in (1, 4, 10)
    ]
    for other in spectra[1:]:
        assert other.exponents == pytest.approx(spectra[0].exponents, abs=1e-6)


def _cases():
    return [
        ("rnn", dict(num_layers=2, bidirectional=True)),
        ("rnn_relu", dict()),
        ("lstm", dict(num_layers=2, bidirectional=True)),
        ("lstm", dict(proj_size=3)),
        ("gru", dict(num_layers=2, bidirectional=True)),
    ]


def _layer(cell, **kwargs):
    if cell == "rnn_relu":
        return rnnkit.RNN(5, 7, nonlinearity="relu", **kwargs)
    return {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU}[cell](5, 7, **kwargs)


@pytest.mark.parametrize(("cell", "kwargs"), _cases(), ids=[f"{c}-{i}" for i, (c, _) in enumerate(_cases())])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_recurrences_reproduce_the_layer(cell, kwargs, with_lengths):
    """Stepping each layer and direction again gives the layer's own states: the step functions,
    the processing order of a reverse direction with lengths and the initial states are right."""
    torch.manual_seed(2)
    layer = _layer(cell, **kwargs)
    T, B = 9, 3
    x = torch.randn(T, B, 5)
    D, L = (2 if layer.bidirectional else 1), layer.num_layers
    P = kwargs.get("proj_size") or 7
    hx = torch.randn(L * D, B, P)
    if cell == "lstm":
        hx = (hx, torch.randn(L * D, B, 7))
    lengths = torch.tensor([9, 4, 6]) if with_lengths else None
    acts = layer.gate_activations(x, hx, lengths=lengths)
    recs = recurrences(layer, x, hx, lengths=lengths)
    assert [(r.layer, r.direction) for r in recs] == [(layer_, d) for layer_ in range(L) for d in range(D)]
    for rec in recs:
        states = rec.run()  # [T, B, S] in processing order
        y = acts[rec.layer].y[:, :, rec.direction].double()
        for b in range(B):
            n = T if lengths is None else int(lengths[b])
            order = range(n) if rec.direction == 0 else range(n - 1, -1, -1)
            want = y[list(order), b]
            assert torch.allclose(states[:n, b, :P], want, atol=1e-5), (rec.label(), b)
            if cell == "lstm":
                c = acts[rec.layer].cell[:, :, rec.direction].double()[list(order), b]
                assert torch.allclose(states[:n, b, P:], c, atol=1e-5)


def test_padding_changes_nothing():
    """A sample's exponents over its own steps do not depend on the padding after them."""
    torch.manual_seed(3)
    gru = rnnkit.GRU(2, 10, bidirectional=True)
    x = torch.randn(40, 1, 2)
    alone = lyapunov_spectrum(gru, x[:25], k=5, generator=torch.Generator().manual_seed(0))
    padded = torch.cat((x[:25], torch.randn(15, 1, 2)))
    with_lengths = lyapunov_spectrum(
        gru, padded, lengths=torch.tensor([25]), k=5, generator=torch.Generator().manual_seed(0)
    )
    for a, b in zip(alone, with_lengths, strict=True):
        assert b.steps == 25
        assert b.exponents == pytest.approx(a.exponents, abs=1e-9)


@pytest.mark.parametrize("mode", ["RNN_TANH", "LSTM", "GRU"])
def test_tangents_are_the_step_jacobian(mode):
    """One step's forward-mode tangents equal the full Jacobian from reverse mode."""
    torch.manual_seed(4)
    G = {"RNN_TANH": 1, "LSTM": 4, "GRU": 3}[mode]
    H = 6
    step = cell_step(mode, torch.randn(G * H, H), b_hn=torch.randn(H) if mode == "GRU" else None)
    S = 2 * H if mode == "LSTM" else H
    s, gx = torch.randn(1, S, dtype=F64), torch.randn(1, G * H, dtype=F64)
    J = torch.autograd.functional.jacobian(lambda v: step(v[None], gx)[0], s[0])
    # exponents over one step from the identity basis: the log singular-value-like diagonal of R
    eye = torch.eye(S, dtype=F64)[None]
    moved = torch.func.vmap(
        lambda v: torch.func.jvp(lambda z: step(z, gx), (s,), (v,))[1], in_dims=2, out_dims=2
    )(eye)
    assert torch.allclose(moved[0], J, atol=1e-12)


def test_bad_arguments_are_named():
    step = _linear(torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match=r"k: expected 1 <= k <= 3"):
        lyapunov_exponents(step, torch.zeros(1, 3), torch.zeros(5, 1), 4)
    with pytest.raises(ValueError, match="interval: expected at least 1"):
        lyapunov_exponents(step, torch.zeros(1, 3), torch.zeros(5, 1), 2, interval=0)
    with pytest.raises(ValueError, match=r"warmup: expected 0 <= warmup < 5"):
        lyapunov_exponents(step, torch.zeros(1, 3), torch.zeros(5, 1), 2, warmup=5)
    with pytest.raises(ValueError, match="samples: expected at least 1"):
        lyapunov_spectrum(rnnkit.GRU(1, 4), torch.zeros(5, 1, 1), samples=0)
