"""Diagnostics: recorded norms against autograd, analytic profiles, statistics, the command."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkit
from diagnostics import (
    GradientFlowRecorder,
    decay_time,
    gate_statistics,
    global_grad_norm,
    jacobian_norms,
    mean_gain,
    memory_horizon,
    summarize,
    weight_statistics,
)
from diagnostics.gradflow import GradflowConfig, run_gradflow
from diagnostics.report import plot, save_json, sparkline
from rnnkit.init import initialize
from tests._naive import naive_stack
from tests._testing import OpCalls, assert_close

ROOT = Path(__file__).resolve().parents[1]
f64 = {"dtype": torch.float64}


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_recorded_norms_equal_autograd(name):
    """Every layer, both directions: ||dL/dh_t|| (and ||dL/dc_t||) per sample equal autograd's."""
    model = getattr(rnnkit, name)(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(7, 5, 3, **f64)
    lengths = torch.tensor([7, 2, 5, 1, 6])
    g_out = torch.randn(7, 5, 8, **f64)
    with GradientFlowRecorder(model) as rec:
        out, _ = model(x, lengths=lengths)
        (out * g_out).sum().backward()
    out_naive, steps = naive_stack(model, x, lengths)
    (out_naive * g_out).sum().backward()
    records = {(s.layer, s.direction, s.path): s for s in rec.records}
    paths = ("h", "c") if name == "LSTM" else ("h",)
    assert set(records) == {(layer, d, p) for layer in range(2) for d in range(2) for p in paths}
    for layer in range(2):
        for d in range(2):
            h_steps, c_steps = steps[layer][d]
            for path, tensors in (("h", h_steps), ("c", c_steps)):
                if path not in paths:
                    continue
                expected = torch.stack([t.grad.norm(dim=-1) for t in tensors], dim=1)  # [B, T]
                assert_close(
                    f"||dL/d{path}|| layer {layer} dir {d}", records[(layer, d, path)].norms, expected
                )


def linear_rnn(a: float, T: int = 40, B: int = 3, H: int = 4):
    """A relu RNN whose units all stay active: linear, W_hh = a·I, so r(k) = a^k exactly."""
    model = rnnkit.RNN(2, H, nonlinearity="relu", dtype=torch.float64)
    with torch.no_grad():
        model.weight_hh_l0.copy_(a * torch.eye(H, **f64))
        model.weight_ih_l0.fill_(1.0)
        model.bias_ih_l0.fill_(1.0)
        model.bias_hh_l0.zero_()
    x = torch.rand(T, B, 2, **f64)  # positive inputs: every pre-activation is positive
    return model, x


def test_analytic_linear_rnn():
    a, T = 0.8, 40
    model, x = linear_rnn(a, T)
    with GradientFlowRecorder(model) as rec:
        out, _ = model(x)
        (out[-1] * torch.randn(out[-1].shape, **f64)).sum().backward()  # the loss at T only
    (record,) = rec.records
    s = summarize(record.mean_by_lag())
    expected = a ** torch.arange(T, **f64)
    assert_close("r(k)", torch.tensor(s.profile, **f64), expected)
    assert s.horizon == math.floor(math.log(1e-3) / math.log(a)) + 1  # first k with a^k < 1e-3
    assert s.tau == pytest.approx(-1 / math.log(a), rel=1e-9)
    assert s.gain == pytest.approx(a, rel=1e-9)
    assert s.verdict == "vanishing"
    (w,) = weight_statistics(model)
    assert w.sigma_max == pytest.approx(a) and w.gate_spectral_radius["h"] == pytest.approx(a)


def test_summaries_of_synthetic_profiles():
    k = torch.arange(100.0, **f64)
    assert memory_horizon(0.9**k) == 66
    assert decay_time(0.5**k) == pytest.approx(1 / math.log(2))
    assert mean_gain(1.05**k) == pytest.approx(1.05)
    exploding = summarize(1.2**k)
    assert exploding.verdict == "exploding" and exploding.horizon is None
    assert exploding.reason.startswith("r(k) passes 1000 at lag 38")  # 1.2^38 > 1e3 > 1.2^37
    stable = summarize(torch.ones(50, **f64))
    assert stable.verdict == "stable" and stable.horizon is None and stable.tau == math.inf
    none = summarize(torch.zeros(10, **f64))
    assert none.verdict == "no gradient"


def test_recorder_costs_nothing_when_off():
    model = rnnkit.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with OpCalls("cpu_lstm_bwd") as calls:
        model(x)[0].sum().backward()
        with GradientFlowRecorder(model):
            model(x)[0].sum().backward()
        model(x)[0].sum().backward()
    assert [args[-3] for args in calls.args] == [False, True, False]  # the record flag
    assert not model._step_grad_hooks and not model._forward_pre_hooks


def test_eval_mode_backward_and_bad_model():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), rnnkit.GRU(3, 4, num_layers=2, dropout=0.5))
    model.eval()
    with GradientFlowRecorder(model) as rec:
        out, _ = model(torch.randn(6, 2, 3))
        out.sum().backward()
    assert len(rec.records) == 2 and all(s.module == "1" for s in rec.records)
    with pytest.raises(ValueError, match="model: no recurrent layer found in GRUCell"):
        GradientFlowRecorder(torch.nn.GRUCell(3, 4))  # a cell records no steps
    lstm = torch.nn.LSTM(3, 4)  # torch.nn's layer itself: it runs as its twin while recorded
    with pytest.warns(UserWarning, match="torch.nn recurrent layers"), GradientFlowRecorder(lstm) as rec:
        lstm(torch.randn(6, 2, 3))[0].sum().backward()
    assert len(rec.records) == 2 and all(s.module == "" for s in rec.records)


def test_gate_statistics_chrono_and_saturation():
    T = 50
    lstm = initialize(rnnkit.LSTM(2, 16), "chrono", seq_len=T)
    (stats,) = gate_statistics(lstm, torch.randn(T, 4, 2))
    assert 0.5 < stats.forget_mean < 1.0
    assert len(stats.forget_time_constants) == 16 and min(stats.forget_time_constants) >= 1.0
    assert set(stats.saturation) == {"i", "f", "g", "o", "tanh(c)"}
    assert all(0.0 <= v <= 1.0 for v in stats.saturation.values())
    # a huge input weight saturates every gate
    with torch.no_grad():
        lstm.weight_ih_l0.fill_(100.0)
    (saturated,) = gate_statistics(lstm, torch.ones(T, 4, 2))
    assert saturated.saturation["i"] == 1.0 and saturated.saturation["g"] == 1.0
    relu = rnnkit.RNN(2, 8, nonlinearity="relu")
    with torch.no_grad():
        relu.bias_ih_l0.fill_(-100.0)
    (dead,) = gate_statistics(relu, torch.zeros(T, 3, 2))
    assert dead.saturation == {"dead": 1.0}


def test_gate_statistics_respect_lengths():
    gru = rnnkit.GRU(2, 3)
    with torch.no_grad():
        gru.weight_ih_l0.fill_(100.0)
    x = torch.ones(6, 2, 2)
    x[3:] = 0.0  # past the lengths: inputs that would not saturate
    (full,) = gate_statistics(gru, x[:3])
    (masked,) = gate_statistics(gru, x, lengths=torch.tensor([3, 3]))
    assert masked.saturation == full.saturation


def test_jacobian_probes_on_linear_rnn():
    a = 0.9
    model, x = linear_rnn(a, T=30)
    (line,) = jacobian_norms(model, x, probes=4, generator=torch.Generator().manual_seed(0))
    profile = torch.tensor(summarize(line.mean_by_lag()).profile, **f64)
    assert_close("r(k) from probes", profile, a ** torch.arange(30, **f64))  # J_k = a^k I for every probe
    assert model.weight_hh_l0.grad is None, "the probe pass must not touch .grad"


def test_weight_and_global_gradient_norms():
    lstm = rnnkit.LSTM(3, 5, bidirectional=True)
    assert global_grad_norm(lstm) is None
    lstm(torch.randn(4, 2, 3))[0].sum().backward()
    stats = weight_statistics(lstm)
    assert [(w.layer, w.direction) for w in stats] == [(0, 0), (0, 1)]
    expected_f = torch.cat(
        [p.grad[5:10].flatten() for n, p in lstm.named_parameters() if n.endswith("_l0")]
    ).norm()
    assert stats[0].gate_grad_norms["f"] == pytest.approx(float(expected_f), rel=1e-6)
    total = torch.cat([p.grad.flatten() for p in lstm.parameters()]).norm()
    assert global_grad_norm(lstm) == pytest.approx(float(total), rel=1e-6)


def test_default_ordering_rnn_vanishes_lstm_chrono_keeps_cell_gradient(tmp_path):
    """The gradflow default comparison, at a smaller size: the expected ordering holds."""
    reports = {r.name: r for r in run_gradflow(GradflowConfig(seq_len=200, hidden=32, batch=8))}
    assert list(reports) == ["rnn/default", "lstm/default", "lstm/chrono", "gru/default", "gru/chrono"]
    rnn = reports["rnn/default"].lines[0].summary
    assert rnn.verdict == "vanishing" and rnn.horizon < 50
    cell_path = next(line for line in reports["lstm/chrono"].lines if line.path == "c").summary
    assert cell_path.horizon is None, "chrono LSTM's cell gradient should reach beyond T"
    # the forward dynamics' top Lyapunov exponent predicts the backward horizon of the default models
    for name in ("rnn/default", "lstm/default", "gru/default"):
        (spectrum,) = reports[name].lyapunov
        assert len(spectrum.exponents) == 16 and spectrum.samples == 8
        measured = max(line.summary.horizon for line in reports[name].lines)
        assert measured / 2 < spectrum.predicted_horizon < measured * 2, (
            name,
            spectrum.exponents[0],
            measured,
        )
    for name in ("lstm/chrono", "gru/chrono"):
        assert -0.05 < reports[name].lyapunov[0].exponents[0] < 0.01
    json_path = save_json(list(reports.values()), tmp_path / "g.json")
    data = json.loads(json_path.read_text())
    first = data["reports"][0]
    assert {"name", "meta", "lines", "weights", "gates", "global_grad_norm"} <= set(first)
    assert first["lines"][0]["summary"]["verdict"] == "vanishing"
    assert first["lyapunov"][0]["exponents"][0] < 0 and first["lyapunov"][0]["predicted_horizon"] > 0
    png = plot(list(reports.values()), tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sparkline_shape():
    line = sparkline([1.0, 1e-3, 1e-6, 1e-12], width=4)
    # log10 r on [-12, 0] in 8 levels: -12 -> 0, -6 -> 3.5 -> 4, -3 -> 5.25 -> 5, 0 -> 7
    assert line == "▁▅▆█"  # the oldest step (the smallest r) left, the loss step right


def test_cli_gradflow_writes_outputs(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "cli.py"),
        "gradflow",
        "--seq-len",
        "60",
        "--hidden",
        "16",
        "--batch",
        "4",
        "--task",
        "adding",
        "--probes",
        "2",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "lstm/chrono" in done.stdout and "horizon" in done.stdout and "λ1" in done.stdout
    data = json.loads((tmp_path / "gradflow.json").read_text())
    assert len(data["reports"]) == 5 and data["reports"][0]["jacobian"]
    assert (tmp_path / "gradflow.png").stat().st_size > 10_000


def test_cli_gradflow_rejects_bad_cell(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "cli.py"),
        "gradflow",
        "--cells",
        "lstm,transformer",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2
    assert "--cells: expected names among rnn, rnn_relu, lstm, gru, got 'transformer'" in done.stderr


@pytest.mark.cuda
def test_recorder_on_gpu_matches_cpu():
    model = rnnkit.LSTM(3, 8, num_layers=2, bidirectional=True)
    x = torch.randn(20, 4, 3)
    results = []
    for device in ("cpu", "cuda"):
        m = model.to(device)
        m.zero_grad()
        with GradientFlowRecorder(m) as rec:
            m(x.to(device))[0].pow(2).sum().backward()
        results.append({(s.layer, s.direction, s.path): s.norms for s in rec.records})
    for key, cpu_norms in results[0].items():
        assert_close(f"norms {key}", results[1][key], cpu_norms, torch.float32)
