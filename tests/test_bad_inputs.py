"""Every bad input a new user tried (issue #15), kept so: through the command line, one line on stderr
that names the argument, what was expected and what was given, a nonzero exit, no traceback and no
file written; through the Python API, a clear error or the result torch.nn gives.

The command-line cases run the real command in this process (`cli.main(argv)`), in a fresh folder.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import cli
import rnnkit
from diagnostics import GradientFlowRecorder, summarize
from diagnostics.report import GradientFlowReport, flow_line, plot, save_json

# a run folder to resume: the adding task's settings, as `train` writes them
RUN_CONFIG = {"task": "adding", "cell": "lstm", "epochs": 2, "batch_size": 4, "lr": 1e-3, "hidden": 8,
              "layers": 1, "seq_len": 10, "steps_per_epoch": 2, "limit": 8}  # fmt: skip


def _run_folder(root: Path, *, checkpoint: bytes | None = None, config: str | None = None) -> None:
    folder = root / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RUN_CONFIG) if config is None else config)
    if checkpoint is not None:
        (folder / "checkpoint.pt").write_bytes(checkpoint)
        (folder / "checkpoint.prev.pt").write_bytes(b"an older checkpoint")


SETUPS = {
    "run": lambda root: _run_folder(root),
    "corrupt checkpoint": lambda root: _run_folder(root, checkpoint=b"PK\x03\x04 truncated"),
    "corrupt config": lambda root: _run_folder(root, config='{"task": "adding", '),
    "a file": lambda root: (root / "afile").write_text("not a folder"),
    "a folder": lambda root: (root / "notarun").mkdir(),
}

# (what was tried, setup, argv, exit status, what the one line on stderr says)
CLI_CASES = [
    # silent wrong results before: now refused
    ("--limit 0", None, "train --task mnist --limit 0", 2, r"--limit: expected at least 1 example per split"),
    ("--steps-per-epoch 0", None, "train --task adding --steps-per-epoch 0", 2,
     r"--steps-per-epoch: expected at least 1, got 0"),
    ("--checkpoint-every -1", None, "train --task adding --checkpoint-every -1", 2,
     r"--checkpoint-every: expected 0 \(at the end of each epoch\) or more steps, got -1"),
    ("--diagnose -1", None, "train --task adding --diagnose -1", 2,
     r"--diagnose: expected 0 \(off\) .* got -1"),
    ("--resume with another --task", "run", "train --resume run --task imdb", 2,
     r"--task: a resumed run keeps its settings \(run/config.json has task: 'adding', given 'imdb'\); "
     r"with --resume only --epochs, --device, --backend apply"),
    ("--resume with fewer --epochs", "run", "train --resume run --lr 0.5", 2, r"--lr: a resumed run keeps"),
    ("an option the task does not use", None, "train --task sine --limit 5", 2,
     r"--limit: does not apply to the sine task \(it uses: cell, epochs"),
    # the #18 settings
    ("--dropout 1", None, "train --task imdb --dropout 1", 2,
     r"--dropout: expected a probability in \[0, 1\), got 1.0"),
    ("--weight-drop 1", None, "train --task mnist --pixel --weight-drop 1", 2,
     r"--weight-drop: expected a probability in \[0, 1\), got 1.0"),
    ("--init chrono on a plain RNN", None, "train --task adding --cell rnn --init chrono", 2,
     r"--init: chrono sets gate biases: it needs --cell lstm or gru, got rnn"),
    ("--pool on a per-step task", None, "train --task adding --pool max", 2,
     r"--pool: does not apply to the adding task"),
    ("--schedule with LBFGS", None, "train --task adding --optimizer lbfgs --schedule cosine", 2,
     r"--schedule: LBFGS sets its own step length"),
    # tracebacks before: now one line
    ("--resume of a missing folder", None, "train --resume missing", 2,
     r"--resume: missing is not a run folder \(no such folder\)"),
    ("--resume of a folder that is no run", "a folder", "train --resume notarun", 2,
     r"--resume: notarun is not a run folder \(no config.json in it\)"),
    ("--resume with a corrupt checkpoint", "corrupt checkpoint", "train --resume run", 2,
     r"--resume: run/checkpoint.pt cannot be read \(.*\): the file is corrupt; the checkpoint before it is "
     r"run/checkpoint.prev.pt"),
    ("--resume with a corrupt config.json", "corrupt config", "train --resume run", 2,
     r"--resume: run/config.json cannot be read \(.*\); the file is corrupt"),
    ("--out under a regular file", "a file", "train --task adding --out afile/run", 2,
     r"--out: cannot create afile/run: afile is a file"),
    ("--out holding a run", "run", "train --task adding --out run", 2,
     r"--out: run holds a run already: continue it with --resume run"),
    ("gradflow --out under a regular file", "a file", "gradflow --seq-len 5 --out afile/flow", 2,
     r"--out: cannot create afile/flow: afile is a file"),
    ("--device foo", None, "train --task adding --device foo", 2,
     r"--device: expected cpu, cuda or cuda:N, got 'foo'"),
    ("gradflow --device foo", None, "gradflow --device foo", 2, r"--device: expected cpu, cuda or cuda:N"),
    ("check --device foo", None, "check --device foo", 2, r"--device: expected cpu, cuda or cuda:N"),
    ("bench --device foo", None, "bench --device foo", 2, r"--device: expected cpu, cuda or cuda:N"),
    ("sine --window -3", None, "train --task sine --window -3", 2,
     r"--window: expected 0 \(the whole waves\) or 2 to 1000 steps, got -3"),
    ("sine --epochs 0", None, "train --task sine --epochs 0", 2, r"--epochs: expected at least 1, got 0"),
    ("--epochs -1", None, "train --task adding --epochs -1", 2, r"--epochs: expected at least 1, got -1"),
    ("sine --compare rnn,foo", None, "train --task sine --compare rnn,foo", 2,
     r"--compare: expected one of rnn, lstm, gru, got 'foo'"),
    ("check --layers LSTMX", None, "check --layers LSTM,LSTMX", 2,
     r"--layers: expected names among RNN, LSTM, GRU, got 'LSTMX'"),
    ("bench --repeats 0", None, "bench --config mnist-rowwise --device cpu --repeats 0", 2,
     r"--repeats: expected at least 1, got 0"),
    ("bench --config foo", None, "bench --config foo", 2,
     r"--config: expected row names among flashrnn-h768"),
    ("results of a folder that is no run", "a folder", "results notarun", 2,
     r"RUN_DIR: notarun is not a run folder \(no config.json in it\)"),
    ("gradflow --seq-len 1", None, "gradflow --seq-len 1", 2, r"--seq-len: expected at least 2, got 1"),
    ("gradflow --advise --loss-at all", None, "gradflow --advise --loss-at all", 2,
     r"--advise: needs --loss-at last: with a loss at every step"),
    ("gradflow --lyapunov -1", None, "gradflow --lyapunov -1", 2, r"--lyapunov: expected at least 0, got -1"),
    ("gradflow --cells transformer", None, "gradflow --cells rnn,transformer", 2,
     r"--cells: expected names among rnn, rnn_relu, lstm, gru, got 'transformer'"),
    ("an unknown --task", None, "train --task foo", 2,
     r"rnnkit train: argument --task: invalid choice: 'foo'"),
    ("--lr 0", None, "train --task adding --lr 0", 2, r"--lr: expected a positive learning rate, got 0.0"),
    ("--batch-size 0", None, "train --task adding --batch-size 0", 2,
     r"--batch-size: expected at least 1, got 0"),
]  # fmt: skip
if not torch.cuda.is_available():
    CLI_CASES += [
        ("--device cuda without a GPU", None, "train --task adding --device cuda", 2,
         r"--device: 'cuda': this machine has no CUDA GPU"),
        ("--backend triton on the CPU", None, "gradflow --backend triton --seq-len 5", 2,
         r"--backend: 'triton' needs CUDA tensors \(got tensors on cpu\)"),
    ]  # fmt: skip


def _files(root: Path) -> dict[str, bytes | None]:
    # every file (its bytes) and folder (None) below root
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("what", "setup", "argv", "status", "pattern"), CLI_CASES, ids=[c[0] for c in CLI_CASES]
)
def test_cli_bad_input_is_one_clear_line(what, setup, argv, status, pattern, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the CPU as a user has it
    if setup:
        SETUPS[setup](tmp_path)
    before = _files(tmp_path)
    try:
        code = cli.main(argv.split())
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    out, err = capsys.readouterr()
    assert code == status, f"exit {code}; stderr: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in out + err
    assert _files(tmp_path) == before, "files or folders were written or changed"


# --- the Python API ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_of_hidden_size_zero_and_empty_batches_act_as_torch_nn(name):
    """torch.nn returns empty tensors for a cell of hidden_size 0 and for an empty batch: so does rnnkit."""
    for hidden, batch in ((0, 3), (5, 0)):
        ours, theirs = getattr(rnnkit, name)(4, hidden), getattr(nn, name)(4, hidden)
        x = torch.randn(batch, 4, requires_grad=True)
        got, want = ours(x), theirs(x)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        assert [g.shape for g in got] == [w.shape for w in want]
        sum(g.sum() for g in got).backward()
        assert x.grad is not None and x.grad.shape == x.shape and not x.grad.any()


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_layers_take_an_empty_batch_as_torch_nn(name):
    ours = getattr(rnnkit, name)(4, 5, num_layers=2, bidirectional=True)
    theirs = getattr(nn, name)(4, 5, num_layers=2, bidirectional=True)
    x = torch.randn(7, 0, 4)
    (out, state), (out_t, state_t) = ours(x), theirs(x)
    assert out.shape == out_t.shape == (7, 0, 10)
    h, h_t = (state[0], state_t[0]) if name == "LSTM" else (state, state_t)
    assert h.shape == h_t.shape == (4, 0, 5)


def test_lstm_hx_of_three_tensors():
    h = torch.zeros(1, 2, 4)
    with pytest.raises(
        ValueError, match=r"hx: expected a tuple \(h_0, c_0\) of 2 tensors for the LSTM, got 3"
    ):
        rnnkit.LSTM(3, 4)(torch.randn(5, 2, 3), (h, h, h))


def test_step_grad_hook_must_be_callable():
    with pytest.raises(
        TypeError, match=r"hook: expected a callable hook\(module, layer, grads\), got int 42"
    ):
        rnnkit.GRU(3, 4).register_step_grad_hook(42)


def test_summary_of_an_empty_profile():
    with pytest.raises(
        ValueError, match=r"norms: expected a profile \[K\] with K >= 1 lags, got shape \[0\]"
    ):
        summarize(torch.tensor([]))


@pytest.mark.parametrize("source", ["nan input", "infinite loss"])
def test_non_finite_gradients_get_their_own_verdict(source, tmp_path):
    """NaN in the input, or an infinite loss, makes the gradient non-finite: the verdict says so (not
    "stable", not "no gradient"), in the table's summary, the JSON and the plot."""
    model = rnnkit.LSTM(3, 8)
    x = torch.randn(20, 4, 3)
    if source == "nan input":
        x[12, 1, 0] = math.nan
    with GradientFlowRecorder(model) as rec:
        out = model(x)[0]
        loss = out[-1].sum() * (math.inf if source == "infinite loss" else 1.0)
        loss.backward()
    lines = [flow_line(s) for s in rec.records]
    assert {line.summary.verdict for line in lines} == {"non-finite"}
    assert all("NaN or infinite" in line.summary.reason for line in lines)
    if source == "nan input":  # h is NaN from t = 12 on: so is every gradient that goes through it
        assert "k = 1 steps back from the loss (time step t = 18)" in lines[0].summary.reason
    report = GradientFlowReport("lstm", {"seq_len": 20}, lines)
    saved = json.loads(save_json([report], tmp_path / "flow.json").read_text())
    assert {line["summary"]["verdict"] for line in saved["reports"][0]["lines"]} == {"non-finite"}
    assert plot([report], tmp_path / "flow.png").stat().st_size > 0
