"""The sine task, as in the classic time-sequence-prediction example: 100 sine waves of length 1000
(period 20·2π, random phase), a 2-layer stack of cells (51 units) and a linear head trained with
LBFGS to predict the next value; the first 3 waves are the test set. Every epoch predicts 1000 steps
past the end by feeding the model its own output, and plots the three waves (solid: fit, dotted:
future). rnnkit's cells run it (`--cell rnn|lstm|gru`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit._checks import ArgumentError, check_at_least, check_choice
from rnnkit.modules import GRUCell, LSTMCell, RNNCell
from rnnkit.plotting import pyplot
from rnnkit.train.run import (
    Run,
    StopRequest,
    TrainingDivergedError,
    rng_state,
    seed_everything,
)

SINE_CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


@dataclass
class SineConfig:
    cell: str = "lstm"
    epochs: int = 15
    lr: float = 0.8
    hidden: int = 51
    waves: int = 100
    length: int = 1000
    period: float = 20.0
    future: int = 1000
    window: int = 0  # train on windows of this many steps (0: the whole waves)
    noise: float = 0.0
    seed: int = 0
    backend: str = "auto"
    device: str = "cpu"

    def validate(self, argument: str = "cell") -> None:
        """Raise `ArgumentError` naming the first bad setting (the cell under ``argument``: "cell", or
        "compare" for a list of cells)."""
        check_choice(argument, self.cell, tuple(SINE_CELLS))
        for name in ("epochs", "hidden", "waves", "length", "future"):
            check_at_least(name, getattr(self, name), 1)
        if self.waves < 4:
            raise ArgumentError("waves", f"expected at least 4 (3 are the test set), got {self.waves}")
        if self.window and not 2 <= self.window <= self.length:
            raise ArgumentError(
                "window", f"expected 0 (the whole waves) or 2 to {self.length} steps, got {self.window}"
            )
        check_at_least("window", self.window, 0, f"0 (the whole waves) or 2 to {self.length} steps")
        if not self.lr > 0:
            raise ArgumentError("lr", f"expected a positive learning rate, got {self.lr}")
        if not self.noise >= 0:
            raise ArgumentError("noise", f"expected a non-negative standard deviation, got {self.noise}")


def make_waves(cfg: SineConfig) -> torch.Tensor:
    """[waves, length] float64: sin((t + φ) / period), φ uniform in [-4·period, 4·period), plus noise."""
    g = torch.Generator().manual_seed(cfg.seed)
    T = int(cfg.period)
    phase = torch.randint(-4 * T, 4 * T, (cfg.waves, 1), generator=g)
    data = torch.sin((torch.arange(cfg.length) + phase).double() / cfg.period)
    if cfg.noise:
        data = data + cfg.noise * torch.randn(data.shape, generator=g, dtype=torch.float64)
    return data


class SineModel(nn.Module):
    """Two rnnkit cells and a linear head, stepped one value at a time (float64)."""

    def __init__(self, cell: str, hidden: int, backend: str = "auto") -> None:
        super().__init__()
        if cell not in SINE_CELLS:
            raise ValueError(f"cell: expected one of {', '.join(SINE_CELLS)}, got {cell!r}")
        self.cell1 = SINE_CELLS[cell](1, hidden, backend=backend, dtype=torch.float64)
        self.cell2 = SINE_CELLS[cell](hidden, hidden, backend=backend, dtype=torch.float64)
        self.head = nn.Linear(hidden, 1, dtype=torch.float64)

    def forward(self, x: torch.Tensor, future: int = 0) -> torch.Tensor:
        """x [B, T] -> predictions [B, T + future] (the future fed with the model's own output)."""
        s1 = s2 = None
        outputs = []
        value = None
        for t in range(x.shape[1] + future):
            value = x[:, t : t + 1] if t < x.shape[1] else value
            s1 = self.cell1(value, s1)
            h1 = s1[0] if isinstance(s1, tuple) else s1
            s2 = self.cell2(h1, s2)
            h2 = s2[0] if isinstance(s2, tuple) else s2
            value = self.head(h2)
            outputs.append(value)
        return torch.cat(outputs, dim=1)


def training_pairs(data: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-value targets: whole waves, or non-overlapping windows of ``window`` steps."""
    if not window:
        return data[:, :-1], data[:, 1:]
    n = (data.shape[1] - 1) // window
    x = data[:, : n * window].reshape(-1, window)
    y = data[:, 1 : n * window + 1].reshape(-1, window)
    return x, y


def plot_predictions(path: Path, curves: dict[str, torch.Tensor], n_input: int, title: str) -> Path:
    """The three test waves: solid up to the end of the input, dotted for the model's own future."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(14, 5), dpi=100)
    colors = ("r", "g", "b")
    styles = ("-", "--")
    for k, (name, pred) in enumerate(curves.items()):
        for i, color in enumerate(colors):
            y = pred[i].detach().cpu().numpy()
            label = name if i == 0 else None
            ax.plot(range(n_input), y[:n_input], color, linestyle=styles[k % 2], linewidth=2.0, label=label)
            ax.plot(range(n_input, len(y)), y[n_input:], color + ":", linewidth=2.0)
    ax.set_title(title)
    ax.set_xlabel("t")
    ax.set_ylabel("value")
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def train_sine(cfg: SineConfig, run: Run, *, resume: bool = False, on_epoch=None) -> dict[str, Any]:
    """Train with LBFGS, one optimizer step per epoch, checkpointing every epoch.

    Returns:
        {"status", "epochs", "train_loss", "test_loss"} (test: the 3 held-out waves' next values).
    """
    device = torch.device(cfg.device)
    data = make_waves(cfg).to(device)
    test_x, test_y = data[:3, :-1], data[:3, 1:]
    train_x, train_y = training_pairs(data[3:], cfg.window)
    seed_everything(cfg.seed)
    model = SineModel(cfg.cell, cfg.hidden, cfg.backend).to(device)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=cfg.lr)
    start = 0
    checkpoint = run.resume(model, optimizer, device) if resume else None
    start = 0 if checkpoint is None else checkpoint["epoch"]
    result: dict[str, Any] = {"status": "finished", "epochs": cfg.epochs}
    with StopRequest() as stop:
        for epoch in range(start, cfg.epochs):
            started = time.perf_counter()

            def closure():
                optimizer.zero_grad()
                loss = F.mse_loss(model(train_x), train_y)
                loss.backward()
                return loss

            # LBFGS returns the loss of its first evaluation, before the step: the epoch's training
            # loss is measured again after it
            first_loss = optimizer.step(closure).item()
            with torch.no_grad():
                train_loss = float(F.mse_loss(model(train_x), train_y))
                pred = model(test_x, future=cfg.future)
                test_loss = float(F.mse_loss(pred[:, : test_y.shape[1]], test_y))
            if not (math.isfinite(first_loss) and math.isfinite(train_loss)):
                bad = first_loss if not math.isfinite(first_loss) else train_loss
                raise TrainingDivergedError(
                    f"the loss became {bad} at epoch {epoch + 1}; training stopped and the last good "
                    f"checkpoint ({run.checkpoint_path}) is kept. Try a lower --lr"
                )
            record = {"kind": "epoch", "step": epoch + 1, "epoch": epoch + 1, "train_loss": train_loss,
                      "test_loss": test_loss, "seconds": time.perf_counter() - started}  # fmt: skip
            run.log(record)
            if run.rank == 0:
                title = (
                    f"{cfg.cell.upper()} epoch {epoch + 1}: test MSE {test_loss:.3g} (dotted: its own future)"
                )
                plot_predictions(
                    run.out / f"predict_{epoch + 1:03d}.png", {cfg.cell: pred}, test_x.shape[1], title
                )
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state()}
            run.save_checkpoint({**state, "epoch": epoch + 1, "step": epoch + 1, "config": asdict(cfg)})
            result.update(train_loss=train_loss, test_loss=test_loss, prediction=pred.cpu())
            if on_epoch:
                on_epoch(record)
            if stop.requested:
                run.log({"kind": "interrupted", "step": epoch + 1, "epoch": epoch + 1})
                return {**result, "status": "interrupted", "epochs": epoch + 1}
    return result


def compare_plot(path: Path, results: dict[str, dict[str, Any]], runs: dict[str, Run], n_input: int) -> Path:
    """One figure for --compare: the test loss per epoch of each cell, and each cell's predictions."""
    plt = pyplot()

    fig, (losses, waves) = plt.subplots(1, 2, figsize=(16, 5), dpi=100, gridspec_kw={"width_ratios": [1, 2]})
    for name, run in runs.items():
        epochs = run.records("epoch")
        losses.plot([r["epoch"] for r in epochs], [r["test_loss"] for r in epochs], marker="o", label=name)
        losses.plot(
            [r["epoch"] for r in epochs],
            [r["train_loss"] for r in epochs],
            "--",
            alpha=0.6,
            label=f"{name} train",
        )
    losses.set_yscale("log")
    losses.set_xlabel("epoch (one LBFGS step)")
    losses.set_ylabel("MSE")
    losses.legend()
    for k, (name, result) in enumerate(results.items()):
        y = result["prediction"][0].numpy()
        color = f"C{k}"
        waves.plot(range(n_input), y[:n_input], color=color, linewidth=1.8, label=name)
        waves.plot(range(n_input, len(y)), y[n_input:], color=color, linestyle=":", linewidth=1.8)
    waves.set_title("test wave 0: fit (solid) and the model's own future (dotted)")
    waves.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
