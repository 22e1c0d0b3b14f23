"""A gradient-flow report: dataclass -> JSON, a PNG plot, and a `rich` rendering."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from diagnostics.gates import GateStats
from diagnostics.recorder import StepNorms
from diagnostics.summary import HORIZON_THRESHOLD, ProfileSummary, summarize
from diagnostics.weights import WeightStats
from rnnkit.plotting import pyplot

SPARK = "▁▂▃▄▅▆▇█"
SPARK_FLOOR = -12.0  # log10 r: the bottom of every sparkline


@dataclass(frozen=True)
class FlowLine:
    """One layer, direction and path of one model.

    Attributes:
        label: e.g. "l0.h", "l1r.c" (layer, "r" for reverse, path), with the module's name
            first when the model has several recurrent modules.
        norms_by_step: batch-mean ||δ_t|| for t = 0..T-1 (None where no sample has step t).
        summary: the decay profile by lag and what it says.
    """

    label: str
    layer: int
    direction: int
    path: str
    norms_by_step: list[float | None]
    summary: ProfileSummary


@dataclass
class GradientFlowReport:
    """Everything measured for one model: JSON-ready (`to_dict`).

    Attributes:
        name: the model's label, e.g. "lstm/chrono".
        meta: how it was measured (cell, init, task, seq_len, hidden, ...).
        lines: the recorded dL/dh_t (and dL/dc_t) profiles.
        weights, gates: weight-side and forward-side statistics.
        global_grad_norm: sqrt(Σ ||∂L/∂θ||²), before any clipping.
        jacobian: ||∂h_T/∂h_t|| estimated with random probes, when asked for.
    """

    name: str
    meta: dict[str, Any]
    lines: list[FlowLine]
    weights: list[WeightStats] = field(default_factory=list)
    gates: list[GateStats] = field(default_factory=list)
    global_grad_norm: float | None = None
    jacobian: list[FlowLine] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def _json_safe(x: Any) -> Any:
    # JSON has no NaN or infinity: NaN -> null, ±inf -> "inf" / "-inf"
    if isinstance(x, float):
        if math.isnan(x):
            return None
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def flow_line(
    norms: StepNorms, *, with_module: bool = False, threshold: float = HORIZON_THRESHOLD
) -> FlowLine:
    """Summarise one recorded `StepNorms` into a `FlowLine` (label with the module's name if asked)."""
    by_step = [None if math.isnan(v) else v for v in norms.mean_by_step().tolist()]
    summary = summarize(norms.mean_by_lag(), threshold, nonfinite=norms.first_nonfinite())
    return FlowLine(norms.label(with_module), norms.layer, norms.direction, norms.path, by_step, summary)


def save_json(reports: list[GradientFlowReport], path: str | Path) -> Path:
    """Write the reports as one JSON document {"reports": [...]}; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"reports": [r.to_dict() for r in reports]}, indent=1))
    tmp.replace(path)
    return path


def sparkline(profile: list[float], width: int = 20) -> str:
    """log10 r(k) in `width` characters, oldest step left, the loss step right; scale [1e-12, 1]."""
    r = torch.tensor([math.nan if v is None else v for v in profile], dtype=torch.float64).flip(0)
    logs = torch.log10(r.clamp_min(10**SPARK_FLOOR))
    top = max(0.0, float(torch.nan_to_num(logs, nan=SPARK_FLOOR).max()))
    chars = []
    for chunk in torch.tensor_split(logs, min(width, len(logs))):
        finite = chunk[torch.isfinite(chunk)]
        if len(finite) == 0:
            chars.append(" ")
            continue
        level = (float(finite.mean()) - SPARK_FLOOR) / (top - SPARK_FLOOR)
        chars.append(SPARK[min(len(SPARK) - 1, max(0, round(level * (len(SPARK) - 1))))])
    return "".join(chars)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"


def render(reports: list[GradientFlowReport], console: Console) -> None:
    """One table per model: horizon, τ, gain, σ_max(W_hh), verdict and a sparkline per line."""
    colors = {"vanishing": "red", "exploding": "magenta", "stable": "green", "non-finite": "bold red"}
    for report in reports:
        sigma = {(w.layer, w.direction): w.sigma_max for w in report.weights}
        caption = f"global grad norm {_fmt(report.global_grad_norm)}"
        forget = [g for g in report.gates if g.forget_mean is not None]
        if forget:
            median = torch.tensor(forget[0].forget_time_constants).median()
            caption += f" · mean forget gate {forget[0].forget_mean:.3f}, median 1/(1-f) {median:.3g} steps"
        table = Table(title=f"{report.name}  (T = {report.meta.get('seq_len')})", caption=caption)
        for col in ("line", "horizon", "τ", "gain", "σmax(Whh)", "verdict", "oldest → loss"):
            spark = col == "oldest → loss"
            justify = "left" if col in ("line", "verdict") or spark else "right"
            table.add_column(col, justify=justify, no_wrap=spark, min_width=20 if spark else None)
        for line in report.lines:
            s = line.summary
            beyond = s.horizon is None and s.verdict not in ("no gradient", "non-finite")
            horizon = "beyond T" if beyond else _fmt(s.horizon)
            color = colors.get(s.verdict, "white")
            table.add_row(
                line.label,
                horizon,
                _fmt(s.tau),
                _fmt(s.gain),
                _fmt(sigma.get((line.layer, line.direction))),
                f"[{color}]{s.verdict}[/]",
                sparkline(s.profile),
            )
        console.print(table)


def plot(reports: list[GradientFlowReport], path: str | Path, *, title: str | None = None) -> Path:
    """PNG: r = ||δ_t|| / ||δ_T|| (log scale) for every model and layer.

    Left: against the time step t (the loss at the right end). Right: against the lag k, the
    steps back from the loss, on a log axis, so that short and long horizons both show. The
    memory horizon (r < 1e-3) is a dot; LSTM cell-state lines (||dL/dc_t||) are dashed.
    """
    plt = pyplot()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (by_step, by_lag) = plt.subplots(
        1, 2, figsize=(14, 5.5), dpi=110, gridspec_kw={"width_ratios": [3, 2]}
    )
    cmap = plt.get_cmap("tab10")
    peak = 1.0
    for i, report in enumerate(reports):
        for line in report.lines:
            if line.summary.verdict == "non-finite":  # nothing to draw but where it went non-finite
                name = f"{report.name} {line.label}" if len(report.lines) > 1 else report.name
                by_step.plot([], [], "x", color=cmap(i % 10), ms=9, label=f"{name}: non-finite")
                note = f"{name}: {line.summary.reason}"
                by_step.text(0.02, 0.95 - 0.05 * i, note, transform=by_step.transAxes, color=cmap(i % 10),
                             fontsize=8, va="top")  # fmt: skip
                continue
            r = torch.tensor(
                [math.nan if v is None else v for v in line.summary.profile], dtype=torch.float64
            )
            r = torch.where(r > 0, r, torch.nan).numpy()  # zero (underflow) cannot be drawn on a log axis
            if not r[0] > 0:
                continue
            peak = max(peak, float(torch.nan_to_num(torch.from_numpy(r), nan=0.0).max()))
            K = len(r)
            t = (K - 1 - torch.arange(K)).numpy() if line.direction == 0 else torch.arange(K).numpy()
            label = f"{report.name} {line.label}" if len(report.lines) > 1 else report.name
            style = {"ls": "--", "lw": 2.2, "zorder": 3} if line.path == "c" else {"ls": "-", "lw": 1.6}
            color = cmap(i % 10)
            by_step.plot(t, r, color=color, label=label, **style)
            by_lag.plot(torch.arange(1, K + 1).numpy(), r, color=color, **style)
            h = line.summary.horizon
            if h is not None:
                by_step.plot([t[h]], [r[h]], "o", color=color, ms=6, zorder=4)
                by_lag.plot([h + 1], [r[h]], "o", color=color, ms=6, zorder=4)
    for ax in (by_step, by_lag):
        ax.axhline(HORIZON_THRESHOLD, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_ylim(10**SPARK_FLOOR, peak * 3)
        ax.grid(True, which="major", alpha=0.3)
    by_step.text(0, HORIZON_THRESHOLD * 2, "horizon threshold 1e-3", color="grey", fontsize=8)
    by_step.set_xlabel("time step t (the loss is at the last step)")
    by_step.set_ylabel("||dL/dh_t|| / ||dL/dh_T||   (dashed: ||dL/dc_t||, LSTM)")
    by_lag.set_xscale("log")
    by_lag.set_xlabel("steps back from the loss, k + 1 (log scale)")
    by_step.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "Gradient flow back through time (dot: memory horizon)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
