"""gradflow --advise: the remedies measured on the same batch and loss, and what they recommend."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from diagnostics.advise import advise, measure, measure_tbptt, plot_advice, save_advice
from diagnostics.gradflow import GradflowConfig, run_advice
from rnnkit.models import SequenceModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def random_task_advice():
    """The built-in random task as the issue states it (hidden 128, T = 500, batch 32): every cell with
    its default init, 4 batches for the norms."""
    cfg = GradflowConfig(seq_len=500, hidden=128, batch=32, inits=("default",), advise_batches=4, lyapunov=0)
    return {a.model: a for a in run_advice(cfg)}


def _row(advice, key):
    return next(r for r in advice.remedies if r.key == key)


def test_expected_ordering_on_the_random_task(random_task_advice):
    """Defaults vanish within a few tens of steps; chrono LSTM (its c) and chrono GRU reach the first
    step; an orthogonal RNN reaches far further than the default one, but not beyond T."""
    rnn, lstm, gru = (random_task_advice[f"{c}/default"] for c in ("rnn", "lstm", "gru"))
    for advice in (rnn, lstm, gru):
        assert advice.current.verdict == "vanishing" and advice.current.horizon < 20, advice.current
        assert advice.task_length == 500
    assert _row(lstm, "chrono").horizon is None and _row(gru, "chrono").horizon is None
    chrono_c = next(line for line in _row(lstm, "chrono").lines if line.path == "c")
    assert chrono_c.summary.horizon is None  # it is the cell state that carries the gradient
    orthogonal = _row(rnn, "orthogonal").horizon
    assert orthogonal is not None and rnn.current.horizon * 3 < orthogonal < 500
    assert _row(rnn, "as_lstm_chrono").horizon is None and _row(rnn, "as_gru_chrono").horizon is None
    # forget bias 1 helps a little, not like chrono
    assert lstm.current.horizon < _row(lstm, "forget_bias_1").horizon < 500


def test_remedies_that_apply_and_only_those(random_task_advice):
    keys = {name: [r.key for r in a.remedies] for name, a in random_task_advice.items()}
    assert keys["rnn/default"] == ["orthogonal", "identity", "as_lstm", "as_lstm_chrono", "as_gru",
                                   "as_gru_chrono", "clip", "tbptt"]  # fmt: skip
    assert keys["lstm/default"] == ["chrono", "forget_bias_1", "clip", "tbptt"]
    assert keys["gru/default"] == ["chrono", "clip", "tbptt"]


def test_recommendation_carries_the_measured_numbers(random_task_advice):
    lstm = random_task_advice["lstm/default"]
    (problem,) = lstm.problems
    assert problem == f"horizon {lstm.current.horizon} steps < task length 500"
    (rec,) = lstm.recommendations
    assert rec.startswith(
        f"horizon {lstm.current.horizon} steps < task length 500: chrono init reaches beyond T"
    )
    assert f"τ {_row(lstm, 'chrono').tau:.3g} steps" in rec


def test_clipping_threshold_comes_from_the_measured_norms(random_task_advice):
    for advice in random_task_advice.values():
        clip = _row(advice, "clip")
        norms = torch.tensor(advice.batch_norms, dtype=torch.float64)
        threshold = float(torch.quantile(norms, 0.5))
        assert len(advice.batch_norms) == 4 and advice.batch_norms[0] == advice.current.global_norm
        assert clip.remedy == f"clip at {threshold:.3g}"
        assert clip.global_norm == pytest.approx(min(advice.current.global_norm, threshold))
        assert f"clips {int((norms > threshold).sum())}" in clip.note


def test_tbptt_is_measured_window_by_window():
    """The truncated profile and gradient equal a hand-written TBPTT (state detached every W steps)."""
    torch.manual_seed(0)
    model = SequenceModel("gru", 2, 12, 1)
    x, y = torch.randn(23, 3, 2), torch.randn(23, 3, 1)

    def loss_fn(m, batch):  # a loss at every step: every window gets its own gradient
        return F.mse_loss(m(batch[0]), batch[1])

    W = 5
    row = measure_tbptt(model, loss_fn, (x, y), W)
    by_hand = copy.deepcopy(model)
    h, outputs = None, []
    for start, stop in ((0, 3), (3, 8), (8, 13), (13, 18), (18, 23)):  # windows end at the last step
        out, h_new = by_hand.recurrent(x[start:stop], h)
        out.retain_grad()
        outputs.append(out)
        h = h_new.detach()
    F.mse_loss(by_hand.head(torch.cat(outputs)), y).backward()
    grads = [p.grad for p in by_hand.parameters()]
    assert row.global_norm == pytest.approx(
        float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads))), rel=1e-6
    )
    # the last window's dL/dh_t is the whole-sequence one of those steps only if nothing flows back
    # into it; within a window, step t gets its own output's gradient plus what flows from t+1
    (line,) = row.lines
    last = outputs[-1].grad[-1].norm(dim=-1).mean()
    assert line.norms_by_step[-1] == pytest.approx(float(last), rel=1e-5)
    assert row.note == "windows of 5 back from the last step, the first 3"


def test_tbptt_with_the_loss_at_the_end_cuts_at_the_window():
    torch.manual_seed(1)
    model = SequenceModel("lstm", 1, 8, 1)
    batch = (torch.randn(40, 2, 1), torch.randn(2, 1))

    def loss_fn(m, b):
        return F.mse_loss(m(b[0])[-1], b[1])

    full = measure(model, loss_fn, batch)
    cut = measure_tbptt(model, loss_fn, batch, 10)
    for whole, window in zip(full.lines, cut.lines, strict=True):
        assert window.summary.profile[:10] == pytest.approx(whole.summary.profile[:10], rel=1e-5)
        assert all(v == 0 for v in window.summary.profile[10:])
    assert cut.horizon == 10


def test_healthy_model_gets_no_change_needed():
    cfg = GradflowConfig(seq_len=100, hidden=32, batch=8, cells=("gru",), inits=("chrono",), advise_batches=4,
                         lyapunov=0)  # fmt: skip
    (advice,) = run_advice(cfg)
    assert advice.current.horizon is None and advice.problems == []
    (rec,) = advice.recommendations
    assert rec.startswith("no change needed: the gradient reaches beyond T (task length 100)")
    assert not any(r.key == "tbptt" for r in advice.remedies)  # nothing to truncate


def _exploding_rnn() -> rnnkit.RNN:
    # relu, W_hh = 1.1 I, no bias, positive inputs: h grows by 1.1 each step, the gradient too
    rnn = rnnkit.RNN(1, 6, nonlinearity="relu")
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(1.1 * torch.eye(6))
        rnn.weight_ih_l0.fill_(0.1)
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    return rnn


def test_exploding_gets_clipping_and_truncation_with_numbers():
    model = _exploding_rnn()
    batches = [torch.rand(120, 2, 1) + 0.1 for _ in range(3)]

    def loss_fn(m, x):
        return m(x)[0][-1].sum()

    advice = advise(model, loss_fn, batches, task_length=120, name="exploding")
    assert advice.current.verdict == "exploding"
    assert advice.problems[0].startswith("exploding: r(k) reaches")
    tbptt = _row(advice, "tbptt")
    first = next(k for k, r in enumerate(advice.current.lines[0].summary.profile) if r > 1e3)
    assert tbptt.remedy == f"TBPTT {first}" and tbptt.peak <= 1e3 and tbptt.verdict != "exploding"
    (rec,) = advice.recommendations
    assert (
        rec.startswith(_row(advice, "clip").remedy) and f"TBPTT {first} keeps r(k) ≤ {tbptt.peak:.3g}" in rec
    )
    tamed = rec.split("; ")[-1].split(" removes the growth")[0]
    assert tamed in ("orthogonal W_hh", "identity W_hh"), rec  # σ(W_hh) = 1: no growth
    assert next(r for r in advice.remedies if r.remedy == tamed).peak <= 1e3


def test_non_finite_is_named_and_nothing_is_claimed():
    model = rnnkit.LSTM(2, 4)
    x = torch.randn(10, 2, 2)
    x[3, 0, 0] = math.nan

    def loss_fn(m, batch):
        return m(batch)[0][-1].sum()

    advice = advise(model, loss_fn, [x], task_length=10)
    assert advice.current.verdict == "non-finite"
    (rec,) = advice.recommendations
    assert rec.startswith("find the NaN or infinity first")


def test_advise_leaves_the_model_and_the_random_state_alone():
    torch.manual_seed(3)
    model = SequenceModel("rnn", 1, 8, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(30, 2, 1)
    state = torch.get_rng_state()
    advise(model, lambda m, b: m(b)[-1].sum(), [x, x], task_length=30)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_are_named():
    model = SequenceModel("gru", 1, 4, 1)
    with pytest.raises(ValueError, match="batches: expected at least one batch"):
        advise(model, lambda m, b: m(b).sum(), [], task_length=5)
    with pytest.raises(ValueError, match="task_length: expected at least 1 step, got 0"):
        advise(model, lambda m, b: m(b).sum(), [torch.zeros(3, 1, 1)], task_length=0)


def test_json_and_plot(random_task_advice, tmp_path):
    advices = list(random_task_advice.values())
    data = json.loads(save_advice(advices, tmp_path / "advice.json").read_text())
    first = data["advice"][0]
    assert (
        first["model"] == "rnn/default"
        and first["recommendations"]
        and first["remedies"][0]["key"] == "orthogonal"
    )
    assert plot_advice(advices, tmp_path / "advice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_advise_prints_the_table_and_writes_files(tmp_path):
    cmd = [sys.executable, str(ROOT / "cli.py"), "gradflow", "--advise", "--seq-len", "60", "--hidden", "16",
           "--batch", "4", "--cells", "lstm", "--lyapunov", "4", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env={**_env(), "COLUMNS": "160"}
    )
    assert done.returncode == 0, done.stderr
    assert "lstm/default: remedies measured on one batch (task length 60)" in done.stdout
    assert "chrono init" in done.stdout and "→ horizon" in done.stdout
    for name in ("gradflow.json", "gradflow.png", "advice.json", "advice.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert [a["model"] for a in json.loads((tmp_path / "advice.json").read_text())["advice"]] == [
        "lstm/default"
    ]


def _env():
    import os

    return dict(os.environ)


def test_the_readme_example_runs(tmp_path):
    """The README's example of `diagnose` and `advise` on a user's own model runs as written."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- example: diagnose -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(block)
    env = {**_env(), "COLUMNS": "160", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "model  (T = 200)" in done.stdout and "λ1" in done.stdout
    assert "horizon" in done.stdout.splitlines()[-1] or "no change needed" in done.stdout.splitlines()[-1]
