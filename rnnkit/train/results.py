"""RESULTS.md from finished run directories: what each run reached, its command, machine and time.

Every number is read from the run's own files (config.json, metrics.jsonl); nothing is typed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnkit._checks import ArgumentError
from rnnkit.bench import markdown_header
from rnnkit.train.run import Run, RunFolderError

_FLAGS = {  # config key -> command-line flag
    "cell": "--cell", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
    "optimizer": "--optimizer", "hidden": "--hidden", "layers": "--layers", "seed": "--seed",
    "clip": "--clip", "dataset": "--dataset", "max_len": "--max-len", "seq_len": "--seq-len",
    "window": "--window", "noise": "--noise", "limit": "--limit", "data_dir": "--data-dir",
}  # fmt: skip
_PER_TASK = {
    "sine": ("cell", "epochs", "lr", "hidden", "window", "noise", "seed"),
    "mnist": (
        "cell",
        "dataset",
        "epochs",
        "batch_size",
        "lr",
        "hidden",
        "layers",
        "seed",
        "data_dir",
        "limit",
    ),
    "imdb": (
        "cell",
        "epochs",
        "batch_size",
        "lr",
        "hidden",
        "layers",
        "max_len",
        "seed",
        "data_dir",
        "limit",
    ),
    "adding": ("cell", "epochs", "batch_size", "lr", "hidden", "layers", "seq_len", "seed"),
    "copy": ("cell", "epochs", "batch_size", "lr", "hidden", "layers", "seq_len", "seed"),
}


def command(config: dict[str, Any]) -> str:
    """The `python cli.py train` command line that reproduces a run's configuration."""
    task = config["task"]
    parts = ["python cli.py train", f"--task {task}"]
    for key in _PER_TASK[task]:
        value = config.get(key)
        if value in (None, False, 0, 0.0) and key not in ("seed",):
            continue
        parts.append(f"{_FLAGS[key]} {value}")
    for flag in ("pixel", "permuted"):
        if config.get(flag):
            parts.append(f"--{flag}")
    return " ".join(parts)


def summarize_run(out: Path) -> dict[str, Any]:
    """The headline numbers of one finished run."""
    run = Run(out, create=False)
    try:
        config = run.config()
    except RunFolderError as err:
        raise ArgumentError("runs", str(err)) from None
    records = run.records()
    epochs = [r for r in records if r.get("kind") == "epoch"]
    times = [r["time"] for r in records if "time" in r]
    if len(times) >= 2:
        seconds, how = times[-1] - times[0] + (epochs[0].get("seconds", 0) if epochs else 0), "wall"
    else:
        seconds, how = sum(r.get("seconds", 0.0) for r in epochs), "training epochs"
    row: dict[str, Any] = {"run": str(out), "task": config["task"], "cell": config.get("cell")}
    row.update(epochs=len(epochs), seconds=seconds, time_kind=how, command=command(config))
    if config["task"] == "sine":
        row["result"] = f"test MSE {epochs[-1]['test_loss']:.3g} (train MSE {epochs[-1]['train_loss']:.3g})"
        return row
    test = next((r for r in reversed(records) if r.get("kind") == "test"), None)
    if test is None:
        row["result"] = "unfinished (no test evaluation)"
        return row
    metric = next(k for k in test if k.startswith("test_") and k not in ("test_loss", "test_examples"))
    value = test[metric]
    row["result"] = (
        f"{metric.replace('_', ' ')} {value:.2%}" if metric.endswith("acc") else f"{metric} {value:.4g}"
    )
    examples = test.get("test_examples")
    on = f" on {examples} examples" if examples is not None else ""
    limited = f", --limit {config['limit']}" if config.get("limit") else ""
    row["result"] += f"{on}{limited} (test loss {test['test_loss']:.4g})"
    return row


def results_markdown(run_dirs: list[Path], machine: dict[str, str]) -> str:
    """A Markdown section: the machine, then one row per run."""
    lines = [
        *markdown_header(machine),
        "| run | task | cell | result | epochs | time | command |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for out in run_dirs:
        r = summarize_run(Path(out))
        minutes = f"{r['seconds'] / 60:.1f} min ({r['time_kind']})"
        cells = (r["run"], r["task"], r["cell"], r["result"], r["epochs"], minutes, f"`{r['command']}`")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"
