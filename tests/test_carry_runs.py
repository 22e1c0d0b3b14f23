"""tools/carry_runs.py: run folders saved into the repository and restored on another machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def carry():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import carry_runs
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return carry_runs


def _run(folder: Path, step: int, epochs: list[tuple[float, float]]) -> Path:
    # a run folder as `cli.py train` leaves it: settings, records, checkpoints, a plot
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"task": "mnist", "permuted": True}))
    (folder / "machine.json").write_text("{}")
    (folder / "permutation.json").write_text("[2, 0, 1]")
    records = [{"kind": "step", "step": 1, "epoch": 1, "loss": 2.0}]
    for e, (val, train) in enumerate(epochs):
        records.append({"kind": "epoch", "epoch": e + 1, "val_acc": val, "train_acc": train})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    torch.save({"step": step, "model": {"w": torch.full((2,), float(step))}}, folder / "checkpoint.pt")
    torch.save({"step": step - 1}, folder / "checkpoint.prev.pt")
    (folder / "curves.png").write_bytes(b"png")
    return folder


def test_save_then_restore_on_a_machine_without_the_run(carry, tmp_path):
    run = _run(tmp_path / "runs" / "ab" / "zo", 120, [(0.43, 0.45)])
    carried = tmp_path / "carried"
    assert carry.save([run], carried) == [carried / "zo"]
    assert sorted(p.name for p in (carried / "zo").iterdir()) == sorted(carry.FILES)
    into = tmp_path / "new-machine" / "runs" / "ab"
    assert carry.restore(into, carried) == {"zo": f"restored {into / 'zo'} (step 120)"}
    for name in carry.FILES:
        assert (into / "zo" / name).read_bytes() == (run / name).read_bytes()
    checkpoint = torch.load(into / "zo" / "checkpoint.pt", weights_only=False)
    assert checkpoint["model"]["w"].tolist() == [120.0, 120.0]


def test_restore_keeps_a_run_that_is_as_far_or_further(carry, tmp_path):
    carried = tmp_path / "carried"
    carry.save([_run(tmp_path / "old" / "zo", 100, [])], carried)
    carry.save([_run(tmp_path / "old" / "row", 100, [])], carried)
    into = tmp_path / "runs"
    _run(into / "zo", 300, [])  # this machine kept it, and it went on
    _run(into / "row", 50, [])  # an older copy: the carried one is further
    done = carry.restore(into, carried)
    assert done["zo"].startswith("kept") and carry._step(into / "zo") == 300
    assert done["row"].startswith("restored") and carry._step(into / "row") == 100
    assert not (into / "row" / "checkpoint.prev.pt").exists()  # the older run's safety copy went


def test_save_refuses_a_folder_without_a_checkpoint(carry, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: not a run folder with a checkpoint"):
        carry.save([tmp_path / "empty"], tmp_path / "carried")


def test_table_puts_runs_side_by_side(carry, tmp_path):
    a = _run(tmp_path / "a", 10, [(0.4342, 0.452), (0.5, 0.51)])
    b = _run(tmp_path / "b", 10, [(0.4042, 0.387)])
    assert carry.table([a, b]).splitlines() == [
        "| epoch | 1 | 2 |",
        "|---|---:|---:|",
        "| a | 43.42 (45.2) | 50.00 (51.0) |",
        "| b | 40.42 (38.7) |  |",
    ]


def test_the_command_line_says_what_it_did(tmp_path):
    run = _run(tmp_path / "zo", 7, [(0.5, 0.5)])
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "carry_runs.py"), "table", str(run)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0 and "| zo | 50.00 (50.0) |" in done.stdout
    bad = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "carry_runs.py"), "save", str(tmp_path / "nothing")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 1 and "not a run folder" in bad.stderr and "Traceback" not in bad.stderr
