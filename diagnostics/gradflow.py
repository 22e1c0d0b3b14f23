"""Compare how far the gradient travels back in RNN, LSTM and GRU models: `python cli.py gradflow`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diagnostics.advise import Advice, advise
from diagnostics.gates import gate_statistics
from diagnostics.lyapunov import spectra_of
from diagnostics.probes import jacobian_norms
from diagnostics.recorder import GradientFlowRecorder, on_rnnkit_layers
from diagnostics.report import GradientFlowReport, flow_line
from diagnostics.weights import global_grad_norm, weight_statistics
from rnnkit._checks import ArgumentError, check_at_least, check_choice, check_where
from rnnkit.init import INITS, initialize
from rnnkit.models import CELLS, SequenceModel
from rnnkit.synthetic import SequenceBatch, SyntheticTask, get_task


@dataclass(frozen=True)
class GradflowConfig:
    """What `run_gradflow` measures.

    Attributes:
        seq_len: T, the steps between the first input and the loss.
        cells: any of "rnn", "rnn_relu", "lstm", "gru". inits: any of `rnnkit.init.INITS`;
            every cell runs with every init that applies to it (chrono: gated cells only).
        task: "random", "adding" or "copy". loss_at: "last" (the loss at the last step only,
            so the profile shows propagation) or "all" (copy: every target step).
        hidden, batch, num_layers, bidirectional: the model and the batch.
        probes: also estimate ||∂h_T/∂h_t|| with this many random probes (0: off).
        lyapunov: the top this many Lyapunov exponents of every layer (0: off), over the first
            ``lyapunov_samples`` samples of the batch.
        advise_batches: batches for the global norm's distribution in `run_advice` (the first is
            the measured batch).
        eval_mode: run the models in eval mode (rnnkit's backward works there; cuDNN's does not).
    """

    seq_len: int = 500
    cells: tuple[str, ...] = CELLS
    inits: tuple[str, ...] = ("default", "chrono")
    task: str = "random"
    loss_at: str = "last"
    hidden: int = 128
    batch: int = 32
    num_layers: int = 1
    bidirectional: bool = False
    probes: int = 0
    lyapunov: int = 16
    lyapunov_samples: int = 8
    advise_batches: int = 8
    eval_mode: bool = False
    device: str = "cpu"
    backend: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        """Raise `ArgumentError` naming the first bad setting (the device and backend too)."""
        for name, value, low in (
            ("seq_len", self.seq_len, 2),
            ("hidden", self.hidden, 1),
            ("batch", self.batch, 1),
            ("num_layers", self.num_layers, 1),
            ("probes", self.probes, 0),
            ("lyapunov", self.lyapunov, 0),
            ("lyapunov_samples", self.lyapunov_samples, 1),
            ("advise_batches", self.advise_batches, 1),
        ):
            check_at_least(name, value, low)
        for cell in self.cells:
            if cell not in (*CELLS, "rnn_relu"):
                raise ArgumentError("cells", f"expected names among rnn, rnn_relu, lstm, gru, got {cell!r}")
        for init in self.inits:
            if init not in INITS:
                raise ArgumentError("inits", f"expected names among {', '.join(INITS)}, got {init!r}")
        check_choice("loss_at", self.loss_at, ("last", "all"))
        check_choice("task", self.task, ("random", "adding", "copy"))
        if not self.models():
            raise ArgumentError(
                "inits",
                f"no model: {', '.join(self.cells)} with {', '.join(self.inits)} (chrono is for lstm, gru)",
            )
        check_where(self.device, self.backend)

    def models(self) -> list[tuple[str, str]]:
        """(cell, init) pairs to run, in order; chrono only for the gated cells."""
        return [(c, i) for c in self.cells for i in self.inits if not (i == "chrono" and c.startswith("rnn"))]


def task_loss(task: SyntheticTask, pred: torch.Tensor, batch: SequenceBatch, loss_at: str) -> torch.Tensor:
    """The task's loss on predictions [T, B, O]: at the last step, or over every target step."""
    S = batch.target.shape[0] if loss_at == "all" else 1
    pred, target = pred[-S:], batch.target[-S:]
    if task.classification:
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))
    return F.mse_loss(pred, target)


def diagnose(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batch: Any,
    *,
    name: str = "model",
    meta: dict[str, Any] | None = None,
    lyapunov: int = 16,
    lyapunov_samples: int = 8,
    probes: int = 0,
    probe_input: torch.Tensor | None = None,
    seed: int = 0,
) -> GradientFlowReport:
    """Everything `python cli.py gradflow` measures, for any model with rnnkit layers: one forward and
    backward on ``batch`` with the recorder, then the weights, the gates and the Lyapunov spectrum.

    Args:
        model: a module with rnnkit RNN/LSTM/GRU layers (its gradients are overwritten), or with
            torch.nn's (a converted copy is measured; a warning says so).
        loss_fn: ``loss_fn(model, batch)`` -> the scalar loss the model trains on.
        batch: what ``loss_fn`` takes.
        name, meta: the report's name and what to keep about how it was measured.
        lyapunov: the top this many Lyapunov exponents per layer (0: off), over the first
            ``lyapunov_samples`` samples of the batch.
        probes: also estimate ||∂h_T/∂h_t|| with this many random probes (0: off), on the
            recurrent layer ``model.recurrent`` with ``probe_input``.
        seed: for the Lyapunov start and the probes.

    Returns:
        A `GradientFlowReport` (`render`, `plot`, `save_json`).

    Example:
        >>> report = diagnose(model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), (x, y))
        >>> report.lines[0].summary.horizon, report.lyapunov[0].exponents[0]
    """
    model = on_rnnkit_layers(model)
    model.zero_grad(set_to_none=True)
    with GradientFlowRecorder(model) as rec:
        loss = loss_fn(model, batch)
        loss.backward()
    many = len(rec.layers) > 1
    gates = []
    for layer, (args, kwargs) in rec.inputs.items():
        gates += gate_statistics(model.get_submodule(layer), *args, name=layer, **kwargs)
    device = next(model.parameters()).device
    jacobian = None
    if probes:
        generator = torch.Generator().manual_seed(seed)
        lines = jacobian_norms(model.recurrent, probe_input, probes=probes, generator=generator)
        jacobian = [flow_line(s) for s in lines]
    spectra = None
    if lyapunov:
        generator = torch.Generator(device).manual_seed(seed)
        spectra = spectra_of(model, rec.inputs, k=lyapunov, samples=lyapunov_samples, generator=generator)
    return GradientFlowReport(
        name=name,
        meta={
            "seq_len": max((r.norms.shape[1] for r in rec.records), default=0),
            **(meta or {}),
            "loss": loss.item(),
        },
        lines=[flow_line(s, with_module=many) for s in rec.records],
        weights=weight_statistics(model),
        gates=gates,
        global_grad_norm=global_grad_norm(model),
        jacobian=jacobian,
        lyapunov=spectra,
    )


def build_model(cell: str, init: str, cfg: GradflowConfig, task: SyntheticTask) -> SequenceModel:
    """The model `run_gradflow` measures for (cell, init), seeded with ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    model = SequenceModel(
        cell,
        task.input_size,
        cfg.hidden,
        task.output_size,
        num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional,
        backend=cfg.backend,
    ).to(torch.device(cfg.device))
    initialize(model.recurrent, init, seq_len=task.total_steps(cfg.seq_len))
    return model.train(not cfg.eval_mode)


def measure_model(
    cell: str, init: str, cfg: GradflowConfig, batch: SequenceBatch, task: SyntheticTask
) -> GradientFlowReport:
    """Build one model, run forward and backward once with the recorder, summarise."""
    model = build_model(cell, init, cfg, task)
    device = torch.device(cfg.device)
    on_device = SequenceBatch(batch.x.to(device), batch.target.to(device))
    meta = {**asdict(cfg), "cell": cell, "init": init, "baseline": task.baseline(cfg.seq_len)}
    meta.pop("cells")
    meta.pop("inits")
    return diagnose(
        model, _task_loss(task, cfg.loss_at), on_device, name=f"{cell}/{init}", meta=meta,
        lyapunov=cfg.lyapunov, lyapunov_samples=cfg.lyapunov_samples, probes=cfg.probes,
        probe_input=on_device.x, seed=cfg.seed,
    )  # fmt: skip


def _task_loss(task: SyntheticTask, loss_at: str) -> Callable[[nn.Module, SequenceBatch], torch.Tensor]:
    return lambda model, batch: task_loss(task, model(batch.x), batch, loss_at)


def run_gradflow(
    cfg: GradflowConfig, on_model: Callable[[str, GradientFlowReport | None], None] | None = None
) -> list[GradientFlowReport]:
    """Measure every (cell, init) model of ``cfg`` on one shared batch of the task.

    Args:
        cfg: the configuration. on_model: called with (name, None) before each model and
            (name, report) after it, for progress display.

    Returns:
        One `GradientFlowReport` per model, in `GradflowConfig.models` order.

    Example:
        >>> reports = run_gradflow(GradflowConfig(seq_len=100, hidden=32))
        >>> [(r.name, r.lines[0].summary.horizon) for r in reports]
    """
    cfg.validate()
    task = get_task(cfg.task)
    batch = task.sample(cfg.batch, cfg.seq_len, torch.Generator().manual_seed(cfg.seed))
    reports = []
    for cell, init in cfg.models():
        name = f"{cell}/{init}"
        if on_model:
            on_model(name, None)
        reports.append(measure_model(cell, init, cfg, batch, task))
        if on_model:
            on_model(name, reports[-1])
    return reports


def run_advice(cfg: GradflowConfig, on_remedy: Callable[[str, str], None] | None = None) -> list[Advice]:
    """`advise` for every (cell, init) model of ``cfg``: the remedies measured on the batch that
    `run_gradflow` uses, the global norm's distribution over ``cfg.advise_batches`` batches.

    Args:
        cfg: the configuration. on_remedy: called with (model name, remedy) before each remedy.

    Returns:
        One `Advice` per model, in `GradflowConfig.models` order.
    """
    cfg.validate()
    task = get_task(cfg.task)
    device = torch.device(cfg.device)
    batches = []
    for i in range(cfg.advise_batches):  # the first is run_gradflow's batch
        b = task.sample(cfg.batch, cfg.seq_len, torch.Generator().manual_seed(cfg.seed + i))
        batches.append(SequenceBatch(b.x.to(device), b.target.to(device)))
    result = []
    for cell, init in cfg.models():
        name = f"{cell}/{init}"
        model = build_model(cell, init, cfg, task)
        progress = None if on_remedy is None else (lambda remedy, name=name: on_remedy(name, remedy))
        result.append(
            advise(model, _task_loss(task, cfg.loss_at), batches, task_length=task.total_steps(cfg.seq_len),
                   name=name, on_remedy=progress)
        )  # fmt: skip
    return result
