"""Diagnostics of training runs: the observer that ``train --diagnose N`` hands the training loop
(`GradientFlowObserver`), a run's trained model on a batch of its own data (`python cli.py gradflow
--run RUN_DIR`), and what the observer recorded along the training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diagnostics.advise import Advice, advise
from diagnostics.gradflow import diagnose
from diagnostics.lyapunov import spectra_of
from diagnostics.recorder import GradientFlowRecorder
from diagnostics.report import GradientFlowReport
from diagnostics.summary import summarize
from diagnostics.weights import global_grad_norm
from rnnkit._checks import ArgumentError
from rnnkit.plotting import pyplot
from rnnkit.train.config import plan_training
from rnnkit.train.loop import TrainConfig
from rnnkit.train.run import Run
from rnnkit.train.tasks import Batch, Task, make_task


class GradientFlowObserver:
    """The training loop's ``on_step`` for ``train --diagnose N``: every ``every`` steps it runs the
    step's forward and backward with a `GradientFlowRecorder`, and logs a "diagnostics" record: each
    line's profile and verdict, λ1 of each layer (one tangent vector over `samples` samples of the
    batch) and the global gradient norm before clipping.

    Example:
        >>> fit(task, cfg, run, on_step=GradientFlowObserver(run.log, every=cfg.diagnose))
    """

    samples = 4  # samples of the batch that λ1 is averaged over

    def __init__(self, log: Callable[[dict[str, Any]], None], every: int) -> None:
        if every < 1:
            raise ValueError(f"every: expected a number of steps >= 1, got {every}")
        self.log, self.every = log, every

    def __call__(
        self, model: nn.Module, step: int, loss_fn: Callable[[], torch.Tensor]
    ) -> torch.Tensor | None:
        """The loss after its backward at the steps it records; None at the others (the loop steps)."""
        if step % self.every:
            return None
        with GradientFlowRecorder(model) as rec:
            loss = loss_fn()
            loss.backward()
        lines = []
        for s in rec.records:
            by_lag = s.mean_by_lag()
            summary = summarize(by_lag, nonfinite=s.first_nonfinite())
            lines.append(
                {"line": s.label(), "horizon": summary.horizon, "tau": summary.tau,
                 "gain": summary.gain, "verdict": summary.verdict, "norms_by_lag": by_lag.tolist()}
            )  # fmt: skip
        norm = global_grad_norm(model)
        generator = torch.Generator(next(model.parameters()).device).manual_seed(step)
        spectra = spectra_of(model, rec.inputs, k=1, samples=self.samples, generator=generator)
        lyapunov = [{"label": sp.label, "lambda1": sp.exponents[0]} for sp in spectra]
        record = {"kind": "diagnostics", "step": step, "lines": lines, "lyapunov": lyapunov}
        self.log({**record, "global_norm": norm})
        return loss


@dataclass
class TrainedRun:
    """A run's trained model with its task, ready to be measured.

    Attributes:
        out: the run folder. config: its settings. task: the prepared task (data loaded).
        model: the model with the checkpoint's weights, in train mode. step, epoch: where the
            checkpoint was written.
    """

    out: Path
    config: TrainConfig
    task: Task
    model: nn.Module
    step: int
    epoch: int

    def batches(self, count: int, split: str = "val") -> list[Batch]:
        """The first ``count`` batches of ``split`` ("test" where the run keeps no validation set)."""
        if not self.task.eval_keys(split, self.config.batch_size):
            split = "test"
        device = next(self.model.parameters()).device
        return [
            self.task.load(split, k, device)
            for k in self.task.eval_keys(split, self.config.batch_size)[:count]
        ]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The loss the run trains on."""
        return self.task.score(model(batch.inputs, batch.lengths), batch)[0]


def load_run(out: str | Path, *, device: str = "cpu", log: Callable[[str], None] | None = None) -> TrainedRun:
    """Load a training run's config, data and last checkpoint.

    Raises:
        ArgumentError: naming ``run``, when the folder is not a run, has no checkpoint yet, or is a
            sine run (its model steps cells one at a time: no layer records a profile).
    """
    out = Path(out)
    try:
        plan = plan_training({"resume": str(out), "device": device})
    except ArgumentError as err:
        raise ArgumentError("run", err.detail) from None
    if plan.config is None:
        raise ArgumentError(
            "run", f"{out} is a {plan.task} run: its cells step one at a time, so no rnnkit layer records a "
            "gradient profile; gradflow --run diagnoses mnist, imdb, adding and copy runs",
        )  # fmt: skip
    cfg = plan.config
    run = Run(out, create=False)
    checkpoint = run.load_checkpoint(device)
    if checkpoint is None:
        raise ArgumentError("run", f"{out} has no checkpoint yet: train it for at least one epoch first")
    task = make_task(cfg.task)
    task.prepare(cfg, log or (lambda _: None))
    model = task.build_model(cfg).to(torch.device(device))
    model.load_state_dict(checkpoint["model"])
    return TrainedRun(
        out, cfg, task, model.train(), int(checkpoint.get("step", 0)), int(checkpoint.get("epoch", 0))
    )


@dataclass
class RunDiagnosis:
    """What `diagnose_run` found: the report of the trained model on one batch, the remedies when
    asked for, and the diagnostics recorded during training (``train --diagnose N``)."""

    run: TrainedRun
    report: GradientFlowReport
    advice: Advice | None
    timeline: list[dict[str, Any]]


def diagnose_run(
    out: str | Path,
    *,
    device: str = "cpu",
    lyapunov: int = 16,
    with_advice: bool = False,
    advise_batches: int = 8,
    eval_mode: bool = False,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    on_remedy: Callable[[str], None] | None = None,
) -> RunDiagnosis:
    """Diagnose the trained model of the run in ``out`` on the first batch of its validation data.

    Args:
        out: the run folder. device: where to compute.
        lyapunov: the top this many Lyapunov exponents per layer (0: off).
        with_advice: also measure the remedies (`diagnostics.advise`); those that re-initialise
            the layers say so, since they would mean training again.
        advise_batches: batches for the global norm's distribution.
        eval_mode: measure in eval mode (no dropout).
        log, on_remedy: progress callbacks.
    """
    trained = load_run(out, device=device, log=log)
    model = trained.model.train(not eval_mode)
    batches = trained.batches(max(1, advise_batches if with_advice else 1))
    name = f"{trained.config.task} {trained.config.cell} (step {trained.step})"
    T = int(batches[0].inputs.shape[0])
    meta = {"run": str(trained.out), "task": trained.config.task, "cell": trained.config.cell,
            "step": trained.step, "epoch": trained.epoch, "seq_len": T}  # fmt: skip
    report = diagnose(model, trained.loss, batches[0], name=name, meta=meta, lyapunov=lyapunov, seed=seed)
    advice = None
    if with_advice:
        advice = advise(
            model,
            trained.loss,
            batches,
            task_length=T,
            name=name,
            on_remedy=on_remedy,
        )
    return RunDiagnosis(trained, report, advice, training_timeline(Run(trained.out, create=False)))


def _scale(ax) -> None:
    # log where the values span more than a factor 10, else linear (readable ticks)
    values = [v for line in ax.get_lines() for v in line.get_ydata() if v > 0]
    if values and max(values) / min(values) > 10:
        ax.set_yscale("log")


def training_timeline(run: Run) -> list[dict[str, Any]]:
    """The diagnostics records of a run (``train --diagnose N``), by step: each with "step",
    "lines" (label, horizon, tau, gain, verdict per line), and, where recorded, "lambda1" (per
    layer) and "global_norm"."""
    return sorted(run.records("diagnostics"), key=lambda r: r["step"])


def plot_timeline(records: list[dict[str, Any]], path: str | Path, *, title: str) -> Path:
    """PNG: the memory horizon of every line, λ1 of every layer and the global gradient norm against the
    training step (a horizon beyond the sequence is drawn at the sequence's length, hollow)."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_h, ax_l, ax_n) = plt.subplots(1, 3, figsize=(16, 4.6), dpi=100)
    steps = [r["step"] for r in records]
    labels = sorted({line["line"] for r in records for line in r["lines"]})
    for label in labels:
        xs, ys, beyond = [], [], []
        for r in records:
            line = next((x for x in r["lines"] if x["line"] == label), None)
            if line is None:
                continue
            T = len(line.get("norms_by_lag") or []) or 1
            if line["horizon"] is None:
                beyond.append((r["step"], T))
            xs.append(r["step"])
            ys.append(T if line["horizon"] is None else line["horizon"])
        (drawn,) = ax_h.plot(xs, ys, marker="o", ms=4, label=label)
        if beyond:
            bx, by = zip(*beyond, strict=True)
            ax_h.plot(bx, by, "o", ms=8, mfc="white", color=drawn.get_color())
    _scale(ax_h)
    ax_h.set_title("memory horizon (hollow: beyond the sequence)", fontsize=10)
    ax_h.set_ylabel("steps")
    ax_h.legend(fontsize=8)
    layers = sorted({x["label"] for r in records for x in r.get("lyapunov", [])})
    for label in layers:
        pts = [
            (r["step"], x["lambda1"]) for r in records for x in r.get("lyapunov", []) if x["label"] == label
        ]
        ax_l.plot(*zip(*pts, strict=True), marker="o", ms=4, label=label)
    if not layers:
        ax_l.text(0.5, 0.5, "not recorded by this run", transform=ax_l.transAxes, ha="center", color="grey")
    ax_l.axhline(0, color="grey", lw=0.8)
    ax_l.set_title("top Lyapunov exponent λ1 per step", fontsize=10)
    if layers:
        ax_l.legend(fontsize=8)
    norms = [(r["step"], r["global_norm"]) for r in records if r.get("global_norm") is not None]
    if norms:
        ax_n.plot(*zip(*norms, strict=True), marker="o", ms=4, color="black")
        _scale(ax_n)
    else:
        ax_n.text(0.5, 0.5, "not recorded by this run", transform=ax_n.transAxes, ha="center", color="grey")
    ax_n.set_title("global gradient norm (before clipping)", fontsize=10)
    for ax in (ax_h, ax_l, ax_n):
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
        if steps:
            ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5 + (max(steps) - min(steps)) * 0.02)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
