"""Compare how far the gradient travels back in RNN, LSTM and GRU models: `python cli.py gradflow`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from diagnostics.gates import gate_statistics
from diagnostics.probes import jacobian_norms
from diagnostics.recorder import GradientFlowRecorder
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


def measure_model(
    cell: str, init: str, cfg: GradflowConfig, batch: SequenceBatch, task: SyntheticTask
) -> GradientFlowReport:
    """Build one model, run forward and backward once with the recorder, summarise."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = SequenceModel(
        cell,
        task.input_size,
        cfg.hidden,
        task.output_size,
        num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional,
        backend=cfg.backend,
    ).to(device)
    initialize(model.recurrent, init, seq_len=task.total_steps(cfg.seq_len))
    model.train(not cfg.eval_mode)
    x, target = batch.x.to(device), batch.target.to(device)
    on_device = SequenceBatch(x, target)
    with GradientFlowRecorder(model) as rec:
        loss = task_loss(task, model(x), on_device, cfg.loss_at)
        loss.backward()
    many = len(rec.layers) > 1
    gates = []
    for name, (args, kwargs) in rec.inputs.items():
        gates += gate_statistics(model.get_submodule(name), *args, name=name, **kwargs)
    jacobian = None
    if cfg.probes:
        generator = torch.Generator().manual_seed(cfg.seed)
        jacobian = [
            flow_line(s) for s in jacobian_norms(model.recurrent, x, probes=cfg.probes, generator=generator)
        ]
    meta = {
        **asdict(cfg),
        "cell": cell,
        "init": init,
        "loss": loss.item(),
        "baseline": task.baseline(cfg.seq_len),
    }
    meta.pop("cells")
    meta.pop("inits")
    return GradientFlowReport(
        name=f"{cell}/{init}",
        meta=meta,
        lines=[flow_line(s, with_module=many) for s in rec.records],
        weights=weight_statistics(model),
        gates=gates,
        global_grad_norm=global_grad_norm(model),
        jacobian=jacobian,
    )


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
