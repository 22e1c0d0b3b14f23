"""tools/gpu_check.py, the one command to run on a GPU machine, on tiny settings on the CPU: every
stage runs, logs to its folder, and the summary says what passed, failed or timed out."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests._testing import DEVICE

ROOT = Path(__file__).resolve().parents[1]
TINY_BENCH = "--device cpu --config mnist-rowwise --modes fwd --warmup 0 --repeats 1"
TINY_TRAIN = "--task adding --seq-len 10 --epochs 1 --steps-per-epoch 2 --batch-size 4 --device cpu --quiet"


def _check(tmp_path: Path, *args: str) -> tuple[int, str]:
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--out", str(tmp_path), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    summary = (tmp_path / "summary.md").read_text()
    assert summary in done.stdout
    return done.returncode, summary


def test_gpu_check_runs_every_stage_and_summarizes(tmp_path):
    code, summary = _check(
        tmp_path,
        "--pytest-args", "tests/test_kernels.py -k test_launch_precision -q -p no:cacheprovider",
        "--bench-args", f"{TINY_BENCH} --providers torch.nn,rnnkit-reference",
        "--train-args", TINY_TRAIN,
        "--skip", "barrier,probe",  # need a GPU: their code is tested below
        "--pack", str(tmp_path / "packed" / "check.tar.gz"),
        # the stages' limits are for a GPU; here a loaded CPU (test workers beside it, matplotlib's
        # first font cache in a new venv) once took the tiny train past its 60 s
        "--tests-limit", "600", "--bench-limit", "600", "--train-limit", "600",
    )  # fmt: skip
    assert code == 0, summary
    assert "## tests: passed" in summary and "- 1 passed" in summary
    assert "## bench: passed" in summary
    assert "- mnist-rowwise float32 ieee rnnkit-reference fwd:" in summary
    assert "## train: passed" in summary and "test_" in summary
    assert {p.name for p in tmp_path.iterdir()} >= {"tests.log", "bench.log", "bench.json", "train.log"}
    with tarfile.open(tmp_path / "packed" / "check.tar.gz") as tar:  # one file for $OUT
        names = set(tar.getnames())
    top = tmp_path.name
    assert {f"{top}/summary.md", f"{top}/tests.log", f"{top}/train/metrics.jsonl"} <= names, names


def test_gpu_check_reports_failures_and_timeouts(tmp_path):
    code, summary = _check(
        tmp_path,
        "--pytest-args", "tests/test_gpu_check.py::test_no_such_test -q -p no:cacheprovider",
        "--bench-args", f"{TINY_BENCH} --providers torch.nn",
        "--bench-limit", "0.5",
        "--skip", "barrier,probe,train",
    )  # fmt: skip
    assert code == 1
    assert "## tests: failed (exit 4)" in summary
    assert "## bench: timed out after 0 s" in summary or "## bench: timed out after 1 s" in summary
    assert "## train: skipped: --skip" in summary and "## barrier: skipped: --skip" in summary


@pytest.mark.interpreter
def test_barrier_probe_loop_runs():
    """The probe's loop (on the GPU where there is one): one program meets itself at the barrier every step
    (more would wait forever there: programs run in turn); without the barrier any number runs."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import barrier_probe
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert barrier_probe.run_loop(1, 5, True, DEVICE).tolist() == [5]
    assert barrier_probe.run_loop(3, 4, False, DEVICE).tolist() == [4, 4, 4]


@pytest.mark.interpreter
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_split_probe_measures_every_configuration(monkeypatch, cell):
    """tools/split_probe.py's sweep on a tiny shape (the interpreter, a wall-clock timer): every
    configuration runs, and each one's numbers, but the one without its barrier, match the
    reference."""
    import time

    from rnnkit.bench import BenchRow

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import split_probe
    finally:
        sys.path.remove(str(ROOT / "tools"))
    monkeypatch.setattr(split_probe, "DEVICE", DEVICE)

    def timer(fn):
        start = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - start)

    results = []
    row = BenchRow("tiny", cell, 20, 3, 8, 48)
    split_probe.probe_row(row, "ieee", results.append, time.monotonic() + 600, timer)
    variants = {(r["pass"], r["variant"]) for r in results if "ms" in r}
    expected = {("fwd", "chosen"), ("fwd", "no barrier"), ("bwd", "chosen"), ("bwd", "BK 64")}
    assert expected <= variants, results
    assert not [r for r in results if "skipped" in r and "Error" in r["skipped"]], results
    for r in results:
        if "ms" in r and r["variant"] != "no barrier":
            assert r["max_abs_error"] < 1e-5, r


def test_gpu_check_summarizes_the_probe(tmp_path):
    """The probe stage's summary line per row and pass: chosen, without the barrier, the fastest."""
    import json

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "tools"))
    rows = [("chosen", 3.5), ("BB/2", 3.1), ("no barrier", 2.5)]
    results = [{"row": "r", "pass": "fwd", "variant": v, "us_per_step": us} for v, us in rows]
    results.append({"row": "r", "pass": "bwd", "variant": "BH×4", "skipped": "300 programs > 132 SMs"})
    (tmp_path / "probe.json").write_text(json.dumps({"machine": {}, "results": results}))
    stage = gpu_check.Stage("probe", [], tmp_path / "probe.log")
    gpu_check._summarize_probe(stage, tmp_path)
    assert stage.details == ["r fwd: 3.50 µs/step, 2.50 without the barrier, fastest BB/2 3.10"]


def _gpu_train(tmp_path: Path, *args: str) -> tuple[int, str]:
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "gpu_train.py"),
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    return done.returncode, done.stdout + done.stderr


def test_gpu_train_runs_stops_at_the_budget_and_resumes(tmp_path):
    """tools/gpu_train.py on the CPU: a job that ends in time finishes (and --pack puts its folder in
    one archive, checkpoint included, not the previous one); one past the budget gets Ctrl-C and
    leaves a resumable checkpoint; a second session resumes the folders it finds."""
    tiny = ["--", "--seq-len", "10", "--batch-size", "4", "--hidden", "8", "--limit", "8"]
    pack = tmp_path.parent / "packed.tar.gz"
    code, out = _gpu_train(tmp_path, "--jobs", "adding", "--budget", "300", "--grace", "30",
                           "--pack", str(pack), *tiny, "--epochs", "2", "--steps-per-epoch", "2")  # fmt: skip
    assert code == 0 and "adding: finished" in out, out
    assert "| adding |" in (tmp_path / "results.md").read_text()
    with tarfile.open(pack) as tar:  # one file for a GPU machine's $OUT
        names = {Path(n).relative_to(tmp_path.name).as_posix() for n in tar.getnames()}
    assert {"results.md", "adding.log", "adding/metrics.jsonl", "adding/checkpoint.pt"} <= names, names
    assert (tmp_path / "adding" / "checkpoint.prev.pt").is_file() and "adding/checkpoint.prev.pt" not in names
    # a job far longer than its budget: stopped by Ctrl-C, saved mid-epoch
    long = tmp_path / "long"
    many = ["--epochs", "1000", "--steps-per-epoch", "1000", "--checkpoint-every", "5"]
    # 20 s before Ctrl-C (the budget less half the grace): a training process needs a few seconds to
    # import torch and reach its loop, many more on a loaded machine, and Ctrl-C before that is no stop
    # at the budget (with 5 s, it failed under two CI workers beside two trainings)
    budget = ["--budget", "50", "--grace", "60"]
    code, out = _gpu_train(long, "--jobs", "adding", *budget, *tiny, *many)
    assert code == 0 and "adding: stopped at the budget, checkpoint saved" in out, out
    assert (long / "adding" / "checkpoint.pt").is_file()
    code, out = _gpu_train(long, "--jobs", "adding", *budget)
    assert "adding: stopped at the budget" in out, out
    assert "--resume" in (long / "adding.log").read_text(), "the second session resumed the run"
