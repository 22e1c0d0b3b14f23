"""The command line runs and reports what the library measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.parity import compare_with_torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("backend, runs", [("auto", "cpu"), ("cpu", "cpu"), ("reference", "reference")])
def test_compare_with_torch_small(backend, runs):
    results = compare_with_torch(
        seq_len=3, batch=2, input_size=4, hidden_size=5, num_layers=2, backend=backend
    )
    assert [r.layer for r in results] == ["RNN", "LSTM", "GRU"]
    for r in results:
        assert r.backend == runs
        assert 0 <= r.output_error < 1e-5, r
        assert 0 <= r.grad_error < 1e-5, r


def test_cli_check_prints_table():
    cmd = [sys.executable, str(ROOT / "cli.py"), "check", "--seq-len", "4", "--batch", "2", "--hidden", "6"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    for word in ("RNN", "LSTM", "GRU", "match"):
        assert word in done.stdout
