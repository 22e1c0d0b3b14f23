"""A training run on disk: config, metrics, checkpoints written atomically, plots.

<out>/config.json      the arguments of the run (what --resume reads back)
<out>/metrics.jsonl    one JSON record per line: steps, epochs, evaluations, diagnostics
<out>/checkpoint.pt    model, optimizer, RNG states, epoch, step: replaced atomically
<out>/*.png            curves (and the task's own plots)
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnkit.plotting import pyplot


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the step. The last checkpoint stays."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Run:
    """One run directory. Under torchrun only rank 0 writes (``rank`` defaults to $RANK).

    Example:
        >>> run = Run(Path("runs/mnist-1"), config={"task": "mnist"})
        >>> run.log({"kind": "epoch", "epoch": 0, "val_acc": 0.97})
    """

    def __init__(self, out: Path, config: dict[str, Any] | None = None, *, rank: int | None = None) -> None:
        self.out = Path(out)
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            if config is not None:
                atomic_write_bytes(self.out / "config.json", json.dumps(config, indent=1).encode())

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def config(self) -> dict[str, Any]:
        path = self.out / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"--resume: {path} not found; is {self.out} a run directory?")
        return json.loads(path.read_text())

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (flushed and synced: a crash keeps it)."""
        if self.rank != 0:
            return
        record = {**record, "time": round(time.time(), 3)}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r.get("kind") == kind]

    def truncate_log(self, step: int) -> None:
        """Drop records written after ``step`` (by a run killed after its last checkpoint)."""
        if self.rank != 0:
            return
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        atomic_write_bytes(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept).encode())

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """torch.save to a temporary file, fsync, then rename over checkpoint.pt."""
        if self.rank != 0:
            return
        tmp = self.checkpoint_path.with_name("checkpoint.pt.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        if not self.checkpoint_path.is_file():
            return None
        return torch.load(self.checkpoint_path, map_location=map_location, weights_only=False)

    def resume(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
    ) -> dict | None:
        """Restore model, optimizer and RNG states from the checkpoint; drop log lines written
        after it (by a run killed later). Returns the checkpoint, or None to start afresh."""
        checkpoint = self.load_checkpoint(device)
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            set_rng_state(checkpoint["rng"])
        self.truncate_log(0 if checkpoint is None else checkpoint["step"])
        return checkpoint


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class StopRequest:
    """Turns SIGINT (Ctrl-C) and SIGTERM into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def plot_curves(run: Run, metric: str) -> None:
    """curves.png in the run directory: the loss by step and by epoch, the metric by epoch."""
    plt = pyplot()

    steps, epochs = run.records("step"), run.records("epoch")
    if not steps and not epochs:
        return
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    if steps:
        ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], alpha=0.5, label="train (step)")
    if epochs and "val_loss" in epochs[0]:
        ax_loss.plot([r["step"] for r in epochs], [r["val_loss"] for r in epochs], "o-", label="validation")
        ax_metric.plot(
            [r["epoch"] + 1 for r in epochs], [r[f"val_{metric}"] for r in epochs], "o-", label="validation"
        )
    if epochs:
        ax_metric.plot(
            [r["epoch"] + 1 for r in epochs], [r[f"train_{metric}"] for r in epochs], "s--", label="train"
        )
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(run.out / "curves.png")
    plt.close(fig)
