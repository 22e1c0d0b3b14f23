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
from diagnostics.lyapunov import LyapunovSpectrum
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
    module: str = ""  # the recurrent module's name in its model


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
        lyapunov: the Lyapunov spectrum of every layer and direction, when asked for.
    """

    name: str
    meta: dict[str, Any]
    lines: list[FlowLine]
    weights: list[WeightStats] = field(default_factory=list)
    gates: list[GateStats] = field(default_factory=list)
    global_grad_norm: float | None = None
    jacobian: list[FlowLine] | None = None
    lyapunov: list[LyapunovSpectrum] | None = None

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
    return FlowLine(
        norms.label(with_module), norms.layer, norms.direction, norms.path, by_step, summary, norms.module
    )


def write_json(document: dict[str, Any], path: str | Path) -> Path:
    """Write a JSON document atomically (a temporary file renamed over ``path``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=1))
    tmp.replace(path)
    return path


def save_json(reports: list[GradientFlowReport], path: str | Path) -> Path:
    """Write the reports as one JSON document {"reports": [...]}; returns the path."""
    return write_json({"reports": [r.to_dict() for r in reports]}, path)


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
        spectra = {(sp.module, sp.layer, sp.direction): sp for sp in report.lyapunov or []}
        if spectra:
            caption += " · λ1: top Lyapunov exponent per step; its horizon: ln(1e-3)/λ1"
        table = Table(title=f"{report.name}  (T = {report.meta.get('seq_len')})", caption=caption)
        columns = (
            "line",
            "horizon",
            "τ",
            "gain",
            "σmax(Whh)",
            "λ1",
            "λ1 horizon",
            "verdict",
            "oldest → loss",
        )
        for col in columns if spectra else tuple(c for c in columns if not c.startswith("λ")):
            spark = col == "oldest → loss"
            justify = "left" if col in ("line", "verdict") or spark else "right"
            table.add_column(col, justify=justify, no_wrap=spark, min_width=20 if spark else None)
        for line in report.lines:
            s = line.summary
            beyond = s.horizon is None and s.verdict not in ("no gradient", "non-finite")
            horizon = "beyond T" if beyond else _fmt(s.horizon)
            color = colors.get(s.verdict, "white")
            cells = [
                line.label,
                horizon,
                _fmt(s.tau),
                _fmt(s.gain),
                _fmt(sigma.get((line.layer, line.direction))),
            ]
            if spectra:
                sp = spectra.get((line.module, line.layer, line.direction))
                lam = None if sp is None else sp.exponents[0]
                reach = None if sp is None else sp.predicted_horizon
                cells += [_fmt(lam), "beyond T" if sp is not None and reach is None else _fmt(reach)]
            table.add_row(*cells, f"[{color}]{s.verdict}[/]", sparkline(s.profile))
        console.print(table)


VERDICT_LEGEND = (
    "vanishing: r(k) falls below 1e-3 (dotted) within the sequence, at the memory horizon (large dot); "
    "the gradient carries almost nothing from further back.   stable: r(k) stays within [1e-3, 1e3] over "
    "every step.\nexploding: r(k) rises above 1e3.   non-finite: a NaN or infinite gradient.   "
    "▼: the curve leaves the axis (r(k) < 1e-12) there.   Solid: ||dL/dh||; dashed: ||dL/dc|| (LSTM)."
)
VERDICT_COLORS = {
    "vanishing": "tab:red",
    "exploding": "tab:purple",
    "stable": "tab:green",
    "non-finite": "black",
}
MARKERS = "osD^vP*Xph<>"


def _drawable(line: FlowLine) -> tuple[Any, Any, int | None]:
    # -> (lags 1..K, r with NaN where it cannot be drawn, the lag index where it leaves the axis)
    r = torch.tensor([math.nan if v is None else v for v in line.summary.profile], dtype=torch.float64)
    below = torch.nonzero(torch.isfinite(r) & (r < 10**SPARK_FLOOR))
    leaves = int(below[0]) if len(below) else None
    r = torch.where(r >= 10**SPARK_FLOOR, r, torch.nan)
    return torch.arange(1, len(r) + 1).numpy(), r.numpy(), leaves


def _marks(K: int, count: int = 8) -> list[int]:
    # marker positions spaced evenly on the log lag axis
    return sorted({round(10**x) - 1 for x in torch.linspace(0, math.log10(K), count).tolist()})


def _draw_line(ax, line: FlowLine, color, marker: str, label: str | None) -> float:
    # one profile on a lag axis; returns its peak (for the y range)
    lags, r, leaves = _drawable(line)
    dashed = line.path == "c"
    ax.plot(lags, r, color=color, ls="--" if dashed else "-", lw=2.0 if dashed else 1.5, marker=marker,
            markevery=_marks(len(r)), ms=5, mfc="white" if dashed else color, label=label)  # fmt: skip
    h = line.summary.horizon
    if h is not None and math.isfinite(r[h]):
        ax.plot([h + 1], [r[h]], "o", color=color, ms=9, mec="black", zorder=5)
    if leaves is not None:
        ax.plot([leaves + 1], [10**SPARK_FLOOR], "v", color=color, ms=9, mec="black", zorder=5, clip_on=False)
    finite = r[~torch.isnan(torch.from_numpy(r)).numpy()]
    return float(finite.max()) if len(finite) else 1.0


def _reach(lines: list[FlowLine]) -> str:
    # "vanishing at 13", or per line "h vanishing at 61 · c stable" when the lines differ
    def one(line: FlowLine) -> str:
        s = line.summary
        return f"{s.verdict} at {s.horizon}" if s.verdict == "vanishing" else s.verdict

    words = [one(line) for line in lines]
    if len(set(words)) <= 1:
        return words[0] if words else "no line"
    return " · ".join(f"{line.label.rsplit('.', 1)[-1] if len(lines) == 2 else line.label} {w}"
                      for line, w in zip(lines, words, strict=True))  # fmt: skip


def _lag_axis(ax, peak: float, lags: int) -> None:
    ax.axhline(HORIZON_THRESHOLD, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(0.8, max(lags, 2) * 1.25)  # also where nothing finite could be drawn
    ax.set_yscale("log")
    ax.set_ylim(10**SPARK_FLOOR, max(peak, 1.0) * 3)
    ax.grid(True, which="major", alpha=0.3)


def plot(reports: list[GradientFlowReport], path: str | Path, *, title: str | None = None) -> Path:
    """PNG: how far the gradient travels back, for every model.

    Top left: r(k) = ||dL/dh_{T-k}|| / ||dL/dh_T|| against the lag k (steps back from the loss, log
    axes), every model and line in one view, each model with its own colour and marker. Top right:
    the Lyapunov spectrum of each model's first layer, when measured. Below: one small panel per
    model, titled with its verdict. A caption says what each verdict means.
    """
    plt = pyplot()
    from matplotlib.gridspec import GridSpec

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(reports)
    cols = min(max(n, 1), 5)
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(16, 5.2 + 2.9 * rows), dpi=100)
    outer = GridSpec(2, 1, figure=fig, height_ratios=[1.9, rows], hspace=0.28)
    has_spectra = any(r.lyapunov for r in reports)
    top = (
        outer[0].subgridspec(1, 2, width_ratios=[3, 2], wspace=0.18)
        if has_spectra
        else outer[0].subgridspec(1, 1)
    )
    grid = outer[1].subgridspec(rows, cols, hspace=0.5, wspace=0.28)
    overview = fig.add_subplot(top[0])
    cmap = plt.get_cmap("tab10")
    peak = 1.0
    for i, report in enumerate(reports):
        color, marker = cmap(i % 10), MARKERS[i % len(MARKERS)]
        small = fig.add_subplot(grid[i // cols, i % cols])
        small_peak = 1.0
        verdicts = []
        for line in report.lines:
            label = f"{report.name} {line.label}" if len(report.lines) > 1 else report.name
            verdicts.append(line.summary.verdict)
            if line.summary.verdict in ("non-finite", "no gradient"):
                small.text(0.03, 0.9 - 0.12 * len(verdicts), f"{line.label}: {line.summary.reason}",
                           transform=small.transAxes, fontsize=7, va="top", wrap=True)  # fmt: skip
                overview.plot([], [], "x", color=color, label=f"{label}: {line.summary.verdict}")
                continue
            peak = max(peak, _draw_line(overview, line, color, marker, label))
            small_peak = max(small_peak, _draw_line(small, line, color, marker, line.label))
        _lag_axis(small, small_peak, max((len(line.summary.profile) for line in report.lines), default=2))
        worst = next((v for v in ("non-finite", "exploding", "vanishing", "stable") if v in verdicts), "")
        small.set_title(
            f"{report.name}: {_reach(report.lines)}", fontsize=9, color=VERDICT_COLORS.get(worst, "black")
        )
        small.tick_params(labelsize=7)
        if len(small.get_legend_handles_labels()[0]) > 1:
            small.legend(fontsize=7, loc="lower left")
        if i % cols == 0:
            small.set_ylabel("r(k)", fontsize=8)
        if i // cols == rows - 1:
            small.set_xlabel("k + 1, steps back from the loss", fontsize=8)
    lags = max((len(line.summary.profile) for r in reports for line in r.lines), default=2)
    _lag_axis(overview, peak, lags)
    overview.text(1.05, HORIZON_THRESHOLD * 1.6, "horizon threshold 1e-3", color="grey", fontsize=8)
    overview.set_xlabel("steps back from the loss, k + 1 (log scale)")
    overview.set_ylabel("r(k) = ||dL/dh_{T-k}|| / ||dL/dh_T||")
    overview.legend(fontsize=8, loc="lower left", ncol=2 if n > 4 else 1)
    if has_spectra:
        _plot_spectra(fig.add_subplot(top[1]), reports, cmap)
    fig.suptitle(title or "Gradient flow back through time")
    fig.text(0.01, 0.005, VERDICT_LEGEND, fontsize=8.5, va="bottom", ha="left", color="dimgrey")
    fig.subplots_adjust(left=0.05, right=0.98, top=0.93, bottom=0.1 if rows == 1 else 0.07)
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_spectra(ax, reports: list[GradientFlowReport], cmap) -> None:
    # λ_i against i for the first layer and direction of every model
    for i, report in enumerate(reports):
        if not report.lyapunov:
            continue
        spectrum = report.lyapunov[0]
        lams = spectrum.exponents
        scale = spectrum.time_scales[0]
        when = f"{scale:.3g} steps" if math.isfinite(scale) else "no decay"
        ax.plot(range(1, len(lams) + 1), lams, color=cmap(i % 10), marker=MARKERS[i % len(MARKERS)], ms=5,
                label=f"{report.name} {spectrum.label}: λ1 = {lams[0]:.3g}, -1/λ1 = {when}")  # fmt: skip
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("i (exponents in decreasing order)")
    ax.set_ylabel("Lyapunov exponent λ_i per step")
    ax.set_title("forward dynamics: a perturbation grows like exp(λ_i t)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="center right")
