"""gradflow --run RUN_DIR: a training run's own model on its own data, and what --diagnose recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diagnostics import GradientFlowRecorder, global_grad_norm
from diagnostics.training import GradientFlowObserver, diagnose_run, load_run, plot_timeline
from rnnkit.train import Run, TrainConfig, fit, make_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adding_run(tmp_path_factory):
    """A small adding run (LSTM, T = 30), diagnosed every 2 steps while it trains."""
    out = tmp_path_factory.mktemp("runs") / "adding"
    cfg = TrainConfig(task="adding", seq_len=30, hidden=16, layers=1, epochs=1, steps_per_epoch=6,
                      batch_size=16, diagnose=2, limit=32, lr=1e-2)  # fmt: skip
    task = make_task("adding")
    task.prepare(cfg, print)
    run = Run(out, {**vars(cfg)})
    fit(task, cfg, run, on_step=GradientFlowObserver(run.log, every=cfg.diagnose))
    return out


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "COLUMNS": "160"}
    command = [sys.executable, str(ROOT / "cli.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


def test_the_trained_weights_are_diagnosed(adding_run):
    diagnosis = diagnose_run(adding_run, with_advice=True, advise_batches=2, lyapunov=4)
    trained = diagnosis.run
    assert (trained.step, trained.epoch) == (6, 1)
    # the report's numbers are those of the checkpoint's model on the first validation batch
    state = torch.load(adding_run / "checkpoint.pt", weights_only=False)["model"]
    model = make_task("adding").build_model(trained.config)
    model.load_state_dict(state)
    batch = trained.batches(1)[0]
    with GradientFlowRecorder(model):
        trained.loss(model, batch).backward()
    assert diagnosis.report.global_grad_norm == pytest.approx(global_grad_norm(model), rel=1e-6)
    assert diagnosis.report.meta["step"] == 6 and diagnosis.report.meta["seq_len"] == 30
    assert [line.label for line in diagnosis.report.lines] == ["l0.h", "l0.c"]
    assert len(diagnosis.report.lyapunov[0].exponents) == 4
    advice = diagnosis.advice
    assert advice.task_length == 30 and advice.current.global_norm == pytest.approx(
        diagnosis.report.global_grad_norm
    )
    assert next(r for r in advice.remedies if r.key == "chrono").note == "T_max = 30; re-initialised"
    assert advice.recommendations


def test_the_training_timeline(adding_run, tmp_path):
    diagnosis = diagnose_run(adding_run, lyapunov=0)
    timeline = diagnosis.timeline
    assert [r["step"] for r in timeline] == [0, 2, 4]
    assert all(r["global_norm"] > 0 and r["lyapunov"][0]["label"] == "l0" for r in timeline)
    png = plot_timeline(timeline, tmp_path / "training.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old = [{k: v for k, v in r.items() if k not in ("lyapunov", "global_norm")} for r in timeline]
    assert plot_timeline(old, tmp_path / "old.png", title="a run from before λ1 was recorded").is_file()


def test_cli_writes_into_the_run_folder(adding_run):
    done = _cli("gradflow", "--run", str(adding_run), "--lyapunov", "4")
    assert done.returncode == 0, done.stderr
    assert "adding lstm (step 6)" in done.stdout and "λ1" in done.stdout
    for name in ("gradflow.json", "gradflow.png", "training.png"):
        assert (adding_run / "gradflow" / name).stat().st_size > 0
    saved = json.loads((adding_run / "gradflow" / "gradflow.json").read_text())
    assert saved["reports"][0]["meta"]["run"] == str(adding_run)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--cells", "rnn"],
            "--cells: does not apply with --run: the run's own model and data are diagnosed",
        ),
        (["--hidden", "8"], "--hidden: does not apply with --run"),
        (["--lyapunov", "-2"], "--lyapunov: expected at least 0, got -2"),
    ],
)
def test_cli_refuses_options_of_the_built_in_models(adding_run, args, message):
    done = _cli("gradflow", "--run", str(adding_run), *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_what_cannot_be_diagnosed_is_named(tmp_path):
    done = _cli("gradflow", "--run", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "--run: " in done.stderr and "not a run folder" in done.stderr
    sine = tmp_path / "sine"
    sine.mkdir()
    (sine / "config.json").write_text(json.dumps({"task": "sine"}))
    done = _cli("gradflow", "--run", str(sine))
    assert done.returncode == 2 and "is a sine run" in done.stderr
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text(json.dumps({"task": "adding", "seq_len": 10}))
    with pytest.raises(ValueError, match="has no checkpoint yet"):
        load_run(fresh)


def test_a_zoneout_run_is_diagnosed_in_both_modes(tmp_path):
    """A run with --zoneout diagnoses in training mode (zoneout masks drawn, every step recorded) and
    with --eval (zoneout's expectation, recorded by its torch ops)."""
    out = tmp_path / "adding-zoneout"
    cfg = TrainConfig(task="adding", seq_len=12, hidden=8, layers=1, epochs=1, steps_per_epoch=2,
                      batch_size=8, limit=16, zoneout=0.2)  # fmt: skip
    task = make_task("adding")
    task.prepare(cfg, print)
    fit(task, cfg, Run(out, {**vars(cfg)}))
    diagnosis = diagnose_run(out, lyapunov=0)
    assert diagnosis.report.meta["seq_len"] == 12 and diagnosis.run.model.recurrent.cell_zoneout == 0.2
    assert [line.label for line in diagnosis.report.lines] == ["l0.h", "l0.c"]
    # in eval mode the expectation runs, with its own per-step record
    expected = diagnose_run(out, eval_mode=True, lyapunov=0)
    assert [line.label for line in expected.report.lines] == ["l0.h", "l0.c"]
    assert not expected.run.model.training
    assert expected.report.lines[0].norms_by_step != diagnosis.report.lines[0].norms_by_step
