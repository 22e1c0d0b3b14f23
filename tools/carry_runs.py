"""Long CPU runs across sessions: a run folder in the repository survives a change of machine.

    python tools/carry_runs.py save runs/ab/permuted-zo0.15 runs/ab/permuted-zo0.5
    python tools/carry_runs.py restore [--into runs/ab]
    python tools/carry_runs.py table runs/ab/permuted-zo0.15 runs/ab/permuted-zo0.5

`runs/` is not in the repository, and a session may find a new machine: three times an A/B in the
middle of its 50 epochs went with it. `save` copies what ``cli.py train --resume`` needs (the
settings, the records, the last checkpoint: under 1 MB for pixel MNIST's LSTM) into
``docs/runs-in-progress/<run>/``, to be committed at the stop; `restore` copies them back, except over
a folder that is already as far or further (a machine that kept its runs). `table` prints the
epochs of runs side by side as Markdown: validation accuracy, training accuracy in brackets.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CARRIED = ROOT / "docs" / "runs-in-progress"
# a run's settings and records, and its last checkpoint (checkpoint.prev.pt is only the safety copy
# while the next one is written; curves.png is drawn again at the next epoch)
FILES = ("config.json", "machine.json", "metrics.jsonl", "permutation.json", "checkpoint.pt")


def _step(folder: Path) -> int:
    # the step a run folder's checkpoint resumes from; -1 without a readable one
    try:
        return int(torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)["step"])
    except (OSError, KeyError, RuntimeError, ValueError, EOFError):
        return -1


def save(runs: list[Path], into: Path = CARRIED) -> list[Path]:
    """Copy each run's `FILES` (those it has) into ``into/<run name>/``; returns the folders written."""
    written = []
    for run in map(Path, runs):
        if not (run / "config.json").is_file() or not (run / "checkpoint.pt").is_file():
            raise FileNotFoundError(f"{run}: not a run folder with a checkpoint (config.json, checkpoint.pt)")
        target = into / run.name
        target.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        written.append(target)
    return written


def restore(into: Path, carried: Path = CARRIED) -> dict[str, str]:
    """Copy every carried run to ``into/<run name>/`` unless the folder there already resumes from the
    same step or a later one. Returns, per run, what was done."""
    done = {}
    for source in sorted(p for p in carried.glob("*") if (p / "config.json").is_file()):
        target = into / source.name
        mine, carried_step = _step(target), _step(source)
        if mine >= carried_step:
            done[source.name] = f"kept {target} (step {mine}; carried: {carried_step})"
            continue
        target.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
        (target / "checkpoint.prev.pt").unlink(missing_ok=True)  # an older run's safety copy
        done[source.name] = f"restored {target} (step {carried_step})"
    return done


def table(runs: list[Path]) -> str:
    """The runs' epoch records as one Markdown table: a row per run, a column per epoch, validation
    accuracy in % (training accuracy in brackets)."""
    rows, last = {}, 0
    for run in map(Path, runs):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        epochs = {r["epoch"]: r for r in records if r.get("kind") == "epoch"}
        rows[run.name] = epochs
        last = max([last, *epochs])
    head = "| epoch | " + " | ".join(str(e) for e in range(1, last + 1)) + " |"
    lines = [head, "|---|" + "---:|" * last]
    for name, epochs in rows.items():
        cells = [
            f"{100 * epochs[e]['val_acc']:.2f} ({100 * epochs[e]['train_acc']:.1f})" if e in epochs else ""
            for e in range(1, last + 1)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save", help="copy run folders into docs/runs-in-progress/")
    p.add_argument("runs", nargs="+", type=Path)
    p = sub.add_parser("restore", help="copy the carried runs back (not over a run as far or further)")
    p.add_argument("--into", type=Path, default=Path("runs/ab"))
    p = sub.add_parser("table", help="the runs' epochs as a Markdown table")
    p.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "save":
            for folder in save(args.runs):
                print(f"saved {folder} (step {_step(folder)})")
        elif args.command == "restore":
            for name, what in restore(args.into).items():
                print(f"{name}: {what}")
        else:
            print(table(args.runs))
    except (OSError, ValueError, KeyError) as e:
        print(f"carry_runs: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
