"""A training run on disk: config, metrics, checkpoints written atomically, plots.

<out>/config.json      the arguments of the run (what --resume reads back)
<out>/machine.json     the machine it started on (device, versions, date): RESULTS.md's header
<out>/metrics.jsonl    one JSON record per line: steps, epochs, evaluations, diagnostics, and a
                       "resumed" record (with the machine) each time the run is resumed
<out>/checkpoint.pt    model, optimizer, RNG states, epoch, step: replaced atomically
<out>/checkpoint.prev.pt   the checkpoint before it: one bad write never loses the run
<out>/*.png            curves (and the task's own plots)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnkit.plotting import pyplot


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the step. The last checkpoint stays."""


class RunFolderError(ValueError):
    """A folder is not a run (no config.json), or its config.json cannot be read: the message says
    which file and why."""


class CheckpointError(ValueError):
    """checkpoint.pt cannot be read (corrupt or truncated): the message names it, and the previous
    checkpoint where one is kept."""


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

    def __init__(
        self, out: Path, config: dict[str, Any] | None = None, *, rank: int | None = None, create: bool = True
    ) -> None:
        self.out = Path(out)
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        if self.rank == 0 and create:
            self.out.mkdir(parents=True, exist_ok=True)
            if config is not None:
                atomic_write_bytes(self.out / "config.json", json.dumps(config, indent=1).encode())
                from rnnkit.bench import machine

                atomic_write_bytes(self.out / "machine.json", json.dumps(machine(), indent=1).encode())

    def machine(self) -> dict[str, str] | None:
        """The machine the run was started on (machine.json), or None for a run without one."""
        try:
            return json.loads((self.out / "machine.json").read_text())
        except (OSError, ValueError):
            return None

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def previous_checkpoint_path(self) -> Path:
        return self.out / "checkpoint.prev.pt"

    def config(self) -> dict[str, Any]:
        """The run's settings (config.json); `RunFolderError` when the folder is not a run."""
        path = self.out / "config.json"
        if not self.out.is_dir():
            raise RunFolderError(f"{self.out} is not a run folder (no such folder)")
        if not path.is_file():
            raise RunFolderError(f"{self.out} is not a run folder (no config.json in it)")
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunFolderError(f"{path} cannot be read ({err}); the file is corrupt") from None
        if not isinstance(config, dict):
            raise RunFolderError(
                f"{path} cannot be read: expected a JSON object, got {type(config).__name__}"
            )
        return config

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
        """torch.save to a temporary file, fsync, then rename over checkpoint.pt; the one it replaces
        becomes checkpoint.prev.pt (a hard link, so checkpoint.pt is never missing)."""
        if self.rank != 0:
            return
        tmp = self.checkpoint_path.with_name("checkpoint.pt.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if self.checkpoint_path.is_file():
            previous = self.previous_checkpoint_path.with_name("checkpoint.prev.pt.tmp")
            previous.unlink(missing_ok=True)
            try:
                os.link(self.checkpoint_path, previous)
            except OSError:  # a file system without hard links
                shutil.copy2(self.checkpoint_path, previous)
            os.replace(previous, self.previous_checkpoint_path)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The last checkpoint, or None where the run has none yet; `CheckpointError` when it
        cannot be read."""
        if not self.checkpoint_path.is_file():
            return None
        try:
            return torch.load(self.checkpoint_path, map_location=map_location, weights_only=False)
        except Exception as err:  # torch.load: RuntimeError, EOFError, UnpicklingError, zip errors...
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            hint = (
                f"the checkpoint before it is {self.previous_checkpoint_path}: move it over checkpoint.pt "
                "to resume from one checkpoint earlier"
                if self.previous_checkpoint_path.is_file()
                else "no earlier checkpoint is kept: start the run again"
            )
            raise CheckpointError(
                f"{self.checkpoint_path} cannot be read ({reason}): the file is corrupt; {hint}"
            ) from None

    def resume(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
    ) -> dict | None:
        """Restore model, optimizer and RNG states from the checkpoint; drop log lines written
        after it (by a run killed later), and log a "resumed" record with the machine it goes on on
        (machine.json keeps the one it started on). Returns the checkpoint, or None to start afresh."""
        checkpoint = self.load_checkpoint(device)
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            set_rng_state(checkpoint["rng"])
        self.truncate_log(0 if checkpoint is None else checkpoint["step"])
        if checkpoint is not None:
            from rnnkit.bench import machine

            self.log({"kind": "resumed", "step": checkpoint["step"], "machine": machine()})
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
    """curves.png in the run directory: the loss by step and by epoch, the metric by epoch.

    Training is blue and validation orange in both panels; epochs are counted from 1 (the table's
    numbers) on an axis of whole epochs.
    """
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    steps, epochs = run.records("step"), run.records("epoch")
    if not steps and not epochs:
        return
    train, val = {"color": "C0"}, {"color": "C1"}
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    if steps:
        ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], alpha=0.5, label="train (step)",
                     **train)  # fmt: skip
    else:  # one record per epoch (sine: one LBFGS step each)
        ax_loss.plot(
            [r["step"] for r in epochs], [r["train_loss"] for r in epochs], "s-", label="train", **train
        )
    if epochs and "val_loss" in epochs[0]:
        ax_loss.plot(
            [r["step"] for r in epochs], [r["val_loss"] for r in epochs], "o-", label="validation", **val
        )
        ax_metric.plot(
            [r["epoch"] for r in epochs],
            [r[f"val_{metric}"] for r in epochs],
            "o-",
            label="validation",
            **val,
        )
    if epochs:
        ax_metric.plot(
            [r["epoch"] for r in epochs],
            [r[f"train_{metric}"] for r in epochs],
            "s--",
            label="train",
            **train,
        )
        if f"test_{metric}" in epochs[0]:  # sine: the held-out waves after each epoch
            test = [r[f"test_{metric}"] for r in epochs]
            ax_metric.plot([r["epoch"] for r in epochs], test, "o-", label="test", color="C2")
        ax_metric.set_xlim(0.5, max(r["epoch"] for r in epochs) + 0.5)
    if metric in ("loss", "mse"):
        ax_metric.set_yscale("log")
    ax_metric.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric)
    if not epochs:  # a run stopped (or plotted) inside its first epoch
        ax_metric.text(0.5, 0.5, "no epoch finished yet", ha="center", transform=ax_metric.transAxes)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(run.out / "curves.png")
    plt.close(fig)
