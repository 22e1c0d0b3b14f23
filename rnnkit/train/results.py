"""RESULTS.md from finished run directories: what each run reached, its command, machine and time.

Every number is read from the run's own files (config.json, machine.json, metrics.jsonl); nothing
is typed in. Rows are grouped by the machine that trained them. `keep_records` copies those files
(and curves.png; not the checkpoints) into the repository, so that the table is written from the
copies and a clean clone regenerates it: a run folder under runs/ lives only as long as its machine.
"""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

from rnnkit._checks import ArgumentError
from rnnkit.bench import markdown_header
from rnnkit.train.config import defaults
from rnnkit.train.loop import HIGHER_IS_BETTER, TrainConfig
from rnnkit.train.run import Run, RunFolderError
from rnnkit.train.sine import SineConfig

_MINIBATCH = ("cell", "epochs", "batch_size", "lr", "optimizer", "schedule", "clip", "hidden", "layers",
              "bidirectional", "dropout", "weight_drop", "zoneout", "init", "seed", "val_fraction", "limit",
              "data_dir", "device", "backend")  # fmt: skip
_PER_TASK = {  # the settings a command line shows, where they differ from the task's defaults
    "sine": ("cell", "epochs", "lr", "hidden", "window", "noise", "seed", "device", "backend"),
    "mnist": ("dataset", "pixel", "permuted", *_MINIBATCH, "pool"),
    "imdb": ("max_len", *_MINIBATCH, "pool"),
    "adding": ("seq_len", "steps_per_epoch", *_MINIBATCH),
    "copy": ("seq_len", "steps_per_epoch", *_MINIBATCH),
}


def _config_defaults(task: str) -> dict[str, Any]:
    # what a run's config.json means where it lacks a setting (one saved before the setting existed)
    cls = SineConfig if task == "sine" else TrainConfig
    return {f.name: f.default for f in fields(cls) if f.name != "extra"}


def _settings_default(task: str, config: dict[str, Any]) -> dict[str, Any]:
    # what `train --task <task>` uses where the command line is silent, for this run's variant
    return {**_config_defaults(task), **defaults(task, config)}


def repo_path(value: str) -> str:
    # a data or run folder as seen from the repository root (the folder `cli.py results` runs in),
    # never one machine's absolute path
    path = Path(value)
    return os.path.relpath(path) if path.is_absolute() else value


def command(config: dict[str, Any]) -> str:
    """The shortest `python cli.py train` command that reproduces a run's configuration: the task
    and every setting that differs from the task's defaults."""
    task = config["task"]
    default = _settings_default(task, config)
    saved = {**_config_defaults(task), **config}
    parts = ["python cli.py train", f"--task {task}"]
    for key in _PER_TASK[task]:
        value = saved.get(key)
        if value == default.get(key) or (key == "data_dir" and value is None):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag[2:]}")
        elif value is None:  # only clip has a default that None undoes: 0 says "no clipping"
            parts.append(f"{flag} 0" if key == "clip" else "")
        else:
            parts.append(f"{flag} {repo_path(value) if key == 'data_dir' else value}")
    return " ".join(p for p in parts if p)


def _wall_seconds(records: list[dict[str, Any]]) -> float:
    """Wall-clock time between a run's first and last record, less the pauses: from an
    "interrupted" record to the first record of the resumed process, and from the last record of a
    killed process to the "resumed" record of the next."""
    times = [(r["time"], r.get("kind")) for r in records if "time" in r]
    return sum(b - a for (a, kind), (b, then) in itertools.pairwise(times)
               if kind != "interrupted" and then != "resumed")  # fmt: skip


def summarize_run(out: Path, machine: dict[str, str] | None = None) -> dict[str, Any]:
    """The headline numbers of one finished run (``machine``: the header of a run without
    machine.json)."""
    run = Run(out, create=False)
    try:
        config = run.config()
    except RunFolderError as err:
        raise ArgumentError("runs", str(err)) from None
    records = run.records()
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if sum("time" in r for r in records) >= 2:
        seconds, how = _wall_seconds(records) + (epochs[0].get("seconds", 0) if epochs else 0), "wall"
    else:
        seconds, how = sum(r.get("seconds", 0.0) for r in epochs), "training epochs"
    row: dict[str, Any] = {"run": repo_path(str(out)), "task": config["task"], "cell": config.get("cell")}
    row.update(epochs=len(epochs), seconds=seconds, time_kind=how, command=command(config))
    row["machine"] = run.machine()
    started_on = row["machine"] or machine or {}
    row["threads"] = _threads(records, started_on.get("threads", "-"))
    moved = _machines(records, started_on)
    if config["task"] == "sine":
        row["result"] = f"test MSE {epochs[-1]['test_loss']:.3g} (train MSE {epochs[-1]['train_loss']:.3g})"
        row["result"] += moved
        return row
    test = next((r for r in reversed(records) if r.get("kind") == "test"), None)
    if test is None:
        best = _best_validation(epochs, config)
        row["result"] = (f"unfinished: {best}" if best else "unfinished (no evaluation yet)") + moved
        return row
    metric = next(k for k in test if k.startswith("test_") and k not in ("test_loss", "test_examples"))
    row["result"] = _score(metric, test[metric])
    examples = test.get("test_examples")
    on = f" on {examples} examples" if examples is not None else ""
    limited = f", --limit {config['limit']}" if config.get("limit") else ""
    row["result"] += f"{on}{limited} (test loss {test['test_loss']:.4g})"
    chosen = next((r for r in reversed(records) if r.get("kind") == "test-best"), None)
    if chosen is not None:  # the run also tested the weights of its best validation epoch
        best = _score(metric, chosen[metric])
        since = chosen["chosen_from_epoch"]
        among = f" of epochs {since}-{len(epochs)}" if since > 1 else ""
        row["result"] += f"; weights of epoch {chosen['epoch']}, the best on validation{among}: {best}"
    row["result"] += moved
    return row


def _machines(records: list[dict[str, Any]], started_on: dict[str, str]) -> str:
    """Empty for a run whose epochs all trained on the machine it started on (machine.json); else
    "; trained on A (epochs 1-20), B (epochs 21-50)", each epoch given to the machine of the last
    "resumed" record before it. A machine is its device, and the CPU products' library where every
    record names one (machine.json files written before it was recorded do not)."""
    machines = [started_on, *(r.get("machine") or {} for r in records if r.get("kind") == "resumed")]
    with_products = all("products" in m for m in machines)

    def name(m: dict[str, str]) -> str:
        device = m.get("device", "unknown device")
        return f"{device} with {m['products']}" if with_products else device

    current, each_epoch = name(started_on), []
    for r in records:
        if r.get("kind") == "resumed":
            current = name(r.get("machine") or {})
        elif r.get("kind") == "epoch":
            each_epoch.append((current, r["epoch"]))
    spans = _spans(each_epoch)
    if all(m == name(started_on) for m, _, _ in spans):
        return ""
    return "; trained on " + _spans_text(spans)


def _threads(records: list[dict[str, Any]], started_on: str) -> str:
    """The CPU threads each epoch trained on: "1", or "1 (epochs 1-37), 2 (epochs 38-50)" for a run resumed
    with another count. Epochs recorded before the count was (older runs) count as ``started_on``,
    the threads of the run's first start."""
    spans = _spans(
        [(str(r.get("threads", started_on)), r["epoch"]) for r in records if r.get("kind") == "epoch"]
    )
    if len(spans) <= 1:
        return spans[0][0] if spans else started_on
    return _spans_text(spans)


def _spans(each_epoch: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    # (value, epoch) in order -> (value, first epoch, last epoch) of each stretch with one value
    spans: list[tuple[str, int, int]] = []
    for value, epoch in each_epoch:
        if spans and spans[-1][0] == value:
            spans[-1] = (value, spans[-1][1], epoch)
        else:
            spans.append((value, epoch, epoch))
    return spans


def _spans_text(spans: list[tuple[str, int, int]]) -> str:
    return ", ".join(f"{v} (epochs {a}-{b})" if a != b else f"{v} (epoch {a})" for v, a, b in spans)


def _score(metric: str, value: float) -> str:
    return f"test acc {value:.2%}" if metric.endswith("acc") else f"test MSE {value:.3g}"


def _best_validation(epochs: list[dict[str, Any]], config: dict[str, Any]) -> str:
    # an unfinished run (no test evaluation yet): its best validation score so far, and when
    keys = [
        k
        for k in (epochs[-1] if epochs else {})
        if k.startswith("val_") and k not in ("val_loss", "val_examples")
    ]
    if not keys:
        return ""
    key = keys[0]
    better = max if HIGHER_IS_BETTER[key.removeprefix("val_")] else min
    best = better(epochs, key=lambda r: r[key])
    value = f"{best[key]:.2%}" if key.endswith("acc") else f"{best[key]:.4g}"
    return f"best {key.replace('_', ' ')} {value} at epoch {best['epoch']} of {config.get('epochs')}"


# what `results` reads of a run folder, and what it links: everything but the checkpoints
RECORD_FILES = ("config.json", "machine.json", "metrics.jsonl", "permutation.json", "curves.png")


def _kept_name(out: Path) -> str:
    parts = [p for p in Path(out).parts if p not in ("runs", ".", "..", "/")]
    return "-".join(parts[-2:] if len(parts) > 1 else parts)


def keep_records(run_dirs: list[Path], into: Path) -> list[Path]:
    """Copy each run's records (`RECORD_FILES`) to ``into``/<name>, where <name> is the last two
    parts of its path ("runs/results/imdb-lstm" -> "results-imdb-lstm"); a run already kept there
    stays as it is. Returns the kept folders, in order."""
    kept: list[Path] = []
    for out in map(Path, run_dirs):
        if not (out / "config.json").is_file():
            raise ArgumentError("runs", f"{out} is not a run folder (no config.json)")
        target = out if out.resolve().parent == into.resolve() else into / _kept_name(out)
        if target in kept:
            raise ArgumentError("runs", f"two runs would be kept as {target}: rename one run folder")
        if target != out:
            target.mkdir(parents=True, exist_ok=True)
            for name in RECORD_FILES:
                if (out / name).is_file():
                    shutil.copyfile(out / name, target / name)
                else:
                    (target / name).unlink(missing_ok=True)  # not a stale copy of an earlier run
        kept.append(target)
    return kept


def results_markdown(run_dirs: list[Path], machine: dict[str, str], *, link_from: Path | None = None) -> str:
    """Markdown: per machine (the run's machine.json; ``machine`` for runs without one), a header
    and one row per run, with the CPU threads its epochs ran on. With ``link_from`` (the folder of
    the Markdown file), each run's curves.png is linked from its row."""
    sections: dict[tuple, list[str]] = {}
    for out in run_dirs:
        r = summarize_run(Path(out), machine)
        minutes = f"{r['seconds'] / 60:.1f} min ({r['time_kind']})"
        source = Path(out) / "curves.png"
        curve = f"[curves]({os.path.relpath(source, link_from)})" if link_from and source.is_file() else ""
        trained_on = r["machine"] or machine
        command = f"`{r['command']}`"
        cells = (r["run"], r["task"], r["cell"], r["result"], r["epochs"], minutes, r["threads"], command,
                 curve)  # fmt: skip
        key = tuple(sorted((k, v) for k, v in trained_on.items() if k not in ("date", "threads")))
        section = sections.setdefault(key, {"dates": [], "rows": []})
        section["dates"].append(trained_on.get("date", ""))
        section["rows"].append("| " + " | ".join(map(str, cells)) + " |")
    lines: list[str] = []
    for key, section in sections.items():
        dates = sorted(d for d in section["dates"] if d)
        when = dates[0] if len(set(dates)) <= 1 else f"runs started {dates[0]} to {dates[-1]}"
        lines += [*markdown_header({**dict(key), "date": when or ""}),
                  "| run | task | cell | result | epochs | time | threads | command | curves |",
                  "|---|---|---|---|---:|---:|---:|---|---|", *section["rows"], ""]  # fmt: skip
    return "\n".join(lines)
