"""Remedies measured, not recited: try each standard fix on the same batch and the same loss.

For a model and a loss on a batch, `advise` measures the gradient's reach back through time for the
model as it is and for each remedy that applies to it:

- chrono initialisation with T_max = the task's length (gated cells; Tallec & Ollivier 2018);
- forget-gate bias 1 (LSTM; Gers et al. 2000, Jozefowicz et al. 2015);
- orthogonal or identity W_hh (RNN; Saxe et al. 2014, Le et al. 2015);
- a GRU or LSTM in place of an RNN (default and chrono initialisation);
- gradient clipping at the median of the global norms over several batches;
- truncated BPTT (windows of W steps: the state is detached between windows).

Each row gives the horizon (the furthest-reaching line's), τ, gain, σmax(W_hh) and the global norm,
then one recommendation per problem found, each with the number that supports it, or "no change
needed" for a healthy profile.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from diagnostics.recorder import GradientFlowRecorder, StepNorms, on_rnnkit_layers, recurrent_layers
from diagnostics.report import FlowLine, _fmt, _json_safe, flow_line, write_json
from diagnostics.summary import HORIZON_THRESHOLD
from diagnostics.weights import global_grad_norm, weight_statistics
from rnnkit.init import initialize
from rnnkit.models import make_layer

Loss = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> scalar loss
CLIP_QUANTILE = 0.5  # clip at the median norm: a spike is cut to a typical step
HEAVY_TAIL = 10.0  # max / median of the global norms over batches that calls for clipping


@dataclass(frozen=True)
class Measured:
    """The model, or one remedy applied to it, measured on the batch.

    Attributes:
        remedy: what was changed ("current model", "chrono init", "TBPTT 14", ...).
        key: "current", "chrono", "forget_bias_1", "orthogonal", "identity", "as_lstm",
            "as_lstm_chrono", "as_gru", "as_gru_chrono", "clip", "tbptt".
        horizon: the furthest-reaching line's memory horizon; None: beyond the sequence.
        tau, gain: the largest decay time and per-step gain over the lines.
        sigma_max: the largest σmax(W_hh) over the layers.
        global_norm: sqrt(Σ ||∂L/∂θ||²) on the batch (after clipping, for the clipping row).
        verdict: the worst line's ("non-finite", "exploding", "vanishing", "stable").
        peak: the largest r(k) over the lines.
        note: how the remedy was set (the clipping threshold, the window, a re-initialisation).
        lines: the measured profiles.
    """

    remedy: str
    key: str
    horizon: int | None
    tau: float
    gain: float
    sigma_max: float | None
    global_norm: float | None
    verdict: str
    peak: float
    note: str = ""
    lines: list[FlowLine] = field(default_factory=list)

    @property
    def reach(self) -> float:
        """The horizon as a number to compare: inf beyond the sequence, -1 without a usable profile."""
        if self.verdict in ("non-finite", "no gradient", "not measured"):
            return -1.0
        return math.inf if self.horizon is None else float(self.horizon)


@dataclass
class Advice:
    """What `advise` found for one model.

    Attributes:
        model: the model's name. task_length: the dependency the task needs (steps).
        current: the model as it is. remedies: each remedy that applies, measured.
        batch_norms: the global gradient norm on each of the batches (the first is the batch
            measured above).
        problems: what is wrong, with its number. recommendations: one per problem (or "no change
            needed"), each with the measured number that supports it.
    """

    model: str
    task_length: int
    current: Measured
    remedies: list[Measured]
    batch_norms: list[float]
    problems: list[str]
    recommendations: list[str]

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return _json_safe(asdict(self))


def _measured(remedy: str, key: str, model: nn.Module, lines: list[FlowLine], note: str = "") -> Measured:
    verdicts = [line.summary.verdict for line in lines]
    worst = next(
        (v for v in ("non-finite", "no gradient", "exploding", "vanishing", "stable") if v in verdicts), ""
    )
    usable = [line for line in lines if line.summary.verdict not in ("non-finite", "no gradient")]
    horizons = [line.summary.horizon for line in usable]
    horizon = None if (usable and None in horizons) else (max(horizons) if horizons else None)
    if worst == "vanishing" and horizon is None:  # one line vanishes, another reaches beyond T
        worst = "stable"
    taus = [line.summary.tau for line in usable if not math.isnan(line.summary.tau)]
    gains = [line.summary.gain for line in usable if not math.isnan(line.summary.gain)]
    peaks = [line.summary.peak for line in usable if not math.isnan(line.summary.peak)]
    sigmas = [w.sigma_max for w in weight_statistics(model)]
    return Measured(
        remedy, key, horizon, max(taus, default=math.nan), max(gains, default=math.nan),
        max(sigmas, default=None), global_grad_norm(model), worst, max(peaks, default=math.nan), note, lines,
    )  # fmt: skip


def measure(model: nn.Module, loss_fn: Loss, batch: Any, remedy: str = "current model", key: str = "current",
            note: str = "") -> Measured:  # fmt: skip
    """One forward and backward of ``model`` on ``batch`` with the recorder; its `Measured` row."""
    model.zero_grad(set_to_none=True)
    with GradientFlowRecorder(model, capture_inputs=False) as rec:
        loss_fn(model, batch).backward()
    many = len(rec.layers) > 1
    return _measured(remedy, key, model, [flow_line(s, with_module=many) for s in rec.records], note)


# ---- remedies that change the model -------------------------------------------------------------


def _replace_layers(model: nn.Module, build: Callable[[nn.Module], nn.Module]) -> nn.Module:
    # a copy of the model with every rnnkit recurrent layer replaced by build(layer)
    changed = copy.deepcopy(model)
    for name, layer in recurrent_layers(changed):
        if not name:  # the model is the layer
            return build(layer)
        parent, _, attr = name.rpartition(".")
        setattr(changed.get_submodule(parent) if parent else changed, attr, build(layer))
    return changed


def _swap(layer: nn.Module, cell: str) -> nn.Module:
    p = next(layer.parameters())
    new = make_layer(
        cell, layer.input_size, layer.hidden_size, num_layers=layer.num_layers,
        bidirectional=layer.bidirectional,
        batch_first=layer.batch_first, bias=layer.bias, dropout=layer.dropout, backend=layer.backend,
    )  # fmt: skip
    return new.to(device=p.device, dtype=p.dtype).train(layer.training)


def _forget_bias_one(layer: nn.Module) -> nn.Module:
    H = layer.hidden_size
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("bias_ih"):
                p[H : 2 * H] = 1.0
            elif name.startswith("bias_hh"):
                p[H : 2 * H] = 0.0
    return layer


def _reinit(scheme: str, seq_len: int) -> Callable[[nn.Module], nn.Module]:
    def build(layer: nn.Module) -> nn.Module:
        return initialize(layer, scheme, seq_len=seq_len if scheme == "chrono" else None)

    return build


def model_remedies(
    model: nn.Module, task_length: int
) -> list[tuple[str, str, str, Callable[[nn.Module], nn.Module]]]:
    """(key, name, note, build) for every remedy that changes the layers of ``model``: the ones
    that apply to its cells (all its rnnkit layers must share one cell type for a swap)."""
    modes = {layer.mode for _, layer in recurrent_layers(model)}
    has_bias = all(layer.bias for _, layer in recurrent_layers(model))
    square = all(getattr(layer, "proj_size", 0) == 0 for _, layer in recurrent_layers(model))
    T = max(task_length, 2)
    out = []
    gated = modes <= {"LSTM", "GRU"}
    if gated and has_bias:
        out.append(("chrono", "chrono init", f"T_max = {T}; re-initialised", _reinit("chrono", T)))
    if modes == {"LSTM"} and has_bias:
        out.append(("forget_bias_1", "forget bias 1", "other weights kept", _forget_bias_one))
    if modes <= {"RNN_TANH", "RNN_RELU"}:
        out.append(("orthogonal", "orthogonal W_hh", "re-initialised", _reinit("orthogonal", T)))
        if square:
            out.append(("identity", "identity W_hh", "re-initialised", _reinit("identity", T)))
        for cell in ("lstm", "gru"):
            out.append((f"as_{cell}", f"{cell.upper()} instead", "default init",
                        lambda layer, cell=cell: _swap(layer, cell)))  # fmt: skip
            if has_bias:
                out.append(
                    (
                        f"as_{cell}_chrono",
                        f"{cell.upper()} + chrono",
                        f"instead; T_max = {T}",
                        lambda layer, cell=cell: initialize(_swap(layer, cell), "chrono", seq_len=T),
                    )
                )
    return out


# ---- truncated BPTT -----------------------------------------------------------------------------


class _Chunked:
    """Patch the forward of rnnkit layers to run windows of ``window`` steps that end at the last step
    (the first window takes the remainder), the state detached between them; keep each window's
    outputs and state so that its backward can run alone."""

    def __init__(self, layers: list[tuple[str, nn.Module]], window: int) -> None:
        self.layers, self.window = layers, window
        self.calls: dict[str, list[list[tuple[torch.Tensor, ...]]]] = {name: [] for name, _ in layers}

    def __enter__(self) -> _Chunked:
        for name, layer in self.layers:
            layer.forward = self._forward(name, layer, layer.forward)
        return self

    def __exit__(self, *exc) -> None:
        for _, layer in self.layers:
            del layer.forward  # back to the class's forward

    def _forward(self, name: str, layer: nn.Module, original):
        def chunked(input, hx=None, *, lengths=None):
            if lengths is not None or not isinstance(input, torch.Tensor):
                raise ValueError(
                    "truncated BPTT is measured on unpadded tensors only (no lengths, no packing)"
                )
            dim = 1 if layer.batch_first and input.dim() == 3 else 0
            T, W = input.shape[dim], self.window
            first = T - (math.ceil(T / W) - 1) * W  # windows end at the last step; the first is the short one
            bounds = [(0, first)] + [(start, W) for start in range(first, T, W)]
            outputs, windows, state = [], [], hx
            for start, length in bounds:
                out, state = original(input.narrow(dim, start, length), state)
                flat = (out, *state) if isinstance(state, tuple) else (out, state)
                windows.append(flat)
                outputs.append(out)
                state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
            # the last window's state is what the caller uses: keep it attached
            last = windows[-1][1:]
            self.calls[name].append(windows)
            return torch.cat(outputs, dim), (last if isinstance(state, tuple) else last[0])

        return chunked


def measure_tbptt(model: nn.Module, loss_fn: Loss, batch: Any, window: int) -> Measured:
    """The model trained with truncated BPTT in windows of ``window`` steps, on ``batch``: the windows
    end at the last step, so a loss there sees a whole window (the first takes the remainder).

    The global norm is that of the truncated gradient (one ordinary backward pass); the profile is
    measured window by window: each window's outputs get their gradient from the loss, then the
    window's own backward runs alone with the recorder, so that every step's dL/dh_t is known.
    """
    model = copy.deepcopy(model)
    layers = recurrent_layers(model)
    for name, layer in layers:
        if layer.bidirectional:
            raise ValueError(f"{name or 'model'}: truncated BPTT does not apply to a bidirectional layer")
    model.zero_grad(set_to_none=True)
    with _Chunked(layers, window) as chunked:
        loss = loss_fn(model, batch)
    loss.backward(retain_graph=True)
    lines = []
    many = len(layers) > 1
    for name, layer in layers:
        paths = ("h", "c") if layer.mode == "LSTM" else ("h",)
        time_dim = 1 if layer.batch_first else 0
        for windows in chunked.calls[name]:
            pieces: dict[tuple[int, str], list[torch.Tensor]] = {}
            for tensors in windows:
                out = tensors[0]
                T_w, B = (
                    (out.shape[time_dim], out.shape[1 - time_dim]) if out.dim() == 3 else (out.shape[0], 1)
                )
                wanted = [t for t in tensors if t.requires_grad]
                grads = torch.autograd.grad(loss, wanted, retain_graph=True, allow_unused=True)
                pairs = [
                    (t, g) for t, g in zip(wanted, grads, strict=True) if g is not None and bool(g.any())
                ]
                records = {}
                if pairs:  # this window's own backward, alone, with the recorder
                    leaf = [p for p in layer.parameters() if p.requires_grad]
                    with GradientFlowRecorder(layer, capture_inputs=False) as rec:
                        outputs, upstream = [t for t, _ in pairs], [g for _, g in pairs]
                        torch.autograd.grad(outputs, leaf, upstream, retain_graph=True, allow_unused=True)
                    records = {(s.layer, s.path): s.norms for s in rec.records}
                for lay in range(layer.num_layers):
                    for path in paths:
                        zeros = torch.zeros(B, T_w, dtype=torch.float64)
                        pieces.setdefault((lay, path), []).append(records.get((lay, path), zeros))
            for (lay, path), parts in pieces.items():
                norms = StepNorms(name, layer.mode, lay, 0, path, torch.cat(parts, dim=1), None)
                lines.append(flow_line(norms, with_module=many))
    del loss
    T = max((len(line.summary.profile) for line in lines), default=window)
    first = T - (math.ceil(T / window) - 1) * window
    note = f"windows of {window} back from the last step" + (
        f", the first {first}" if first != window else ""
    )
    return _measured(f"TBPTT {window}", "tbptt", model, lines, note)


# ---- the advice ---------------------------------------------------------------------------------


def _horizon_words(m: Measured) -> str:
    return "beyond T" if m.horizon is None else f"{m.horizon} steps"


def advise(
    model: nn.Module,
    loss_fn: Loss,
    batches: Sequence[Any],
    *,
    task_length: int,
    name: str = "model",
    on_remedy: Callable[[str], None] | None = None,
) -> Advice:
    """Measure the model and every remedy that applies to it on ``batches[0]``; say what to change.

    Args:
        model: a module with rnnkit recurrent layers, or torch.nn's (a converted copy, said in a
            warning); not changed: remedies run on copies.
        loss_fn: ``loss_fn(model, batch)`` -> the scalar loss the model trains on. The profile shows
            how far the gradient travels when the loss sits where the dependency ends (the last
            step); with a loss at every step, each step's gradient is mostly its own loss's.
        batches: the batch to measure on first, then more batches of the same data for the global
            norm's distribution (which sets the clipping threshold); at least one.
        task_length: the longest dependency the task needs, in steps (the sequence length for the
            built-in tasks): the horizon it is compared with.
        name: the model's name in the advice. on_remedy: called with each remedy's name before it
            is measured (progress).

    Returns:
        An `Advice`: the rows, the problems and one recommendation per problem.

    Example:
        >>> advice = advise(model, lambda m, b: loss(m(b.x), b.target), [batch], task_length=500)
        >>> advice.recommendations
    """
    if not batches:
        raise ValueError("batches: expected at least one batch, got none")
    if task_length < 1:
        raise ValueError(f"task_length: expected at least 1 step, got {task_length}")
    step = on_remedy or (lambda _: None)
    was_training = model.training
    model = on_rnnkit_layers(model)
    model = copy.deepcopy(model)
    step("current model")
    current = measure(model, loss_fn, batches[0])
    norms = [current.global_norm or 0.0]
    for batch in batches[1:]:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        norms.append(global_grad_norm(model) or 0.0)
    remedies = []
    for key, remedy, note, build in model_remedies(model, task_length):
        step(remedy)
        with torch.random.fork_rng(
            devices=[]
        ):  # re-initialisations are reproducible; the caller's RNG is kept
            torch.manual_seed(0)
            changed = _replace_layers(model, build).train(was_training)
        remedies.append(measure(changed, loss_fn, batches[0], remedy, key, note))
    norms_t = torch.tensor(norms, dtype=torch.float64)
    threshold = float(torch.quantile(norms_t, CLIP_QUANTILE)) if len(norms) > 1 else norms[0]
    clipped = int((norms_t > threshold).sum())
    step("gradient clipping")
    remedies.append(
        Measured(
            f"clip at {threshold:.3g}", "clip", current.horizon, current.tau, current.gain,
            current.sigma_max, min(current.global_norm or 0.0, threshold), current.verdict, current.peak,
            f"the median of {len(norms)} batches' norms, clips {clipped}" if len(norms) > 1
            else "this batch's norm: one batch, no distribution",
            current.lines,
        )
    )  # fmt: skip
    window = _window(current, task_length)
    layers = recurrent_layers(model)
    if window is not None and not any(layer.bidirectional for _, layer in layers):
        step(f"truncated BPTT ({window})")
        try:
            remedies.append(measure_tbptt(model, loss_fn, batches[0], window))
        except ValueError as err:  # padded or packed input: not measured, and the row says why
            remedy = f"TBPTT {window}"
            remedies.append(Measured(remedy, "tbptt", None, math.nan, math.nan, None, None, "not measured",
                                     math.nan, str(err)))  # fmt: skip
    problems, recommendations = _recommend(current, remedies, norms, task_length)
    return Advice(name, task_length, current, remedies, norms, problems, recommendations)


def _window(current: Measured, task_length: int) -> int | None:
    # the TBPTT window to try: below the lag where r passes 1e3 when exploding, else the horizon
    # (truncating there loses what is below 1e-3 anyway); None when the gradient reaches beyond T
    if current.verdict == "exploding":
        firsts = []
        for line in current.lines:
            r = torch.tensor([math.nan if v is None else v for v in line.summary.profile])
            over = torch.nonzero(r > 1 / HORIZON_THRESHOLD)
            if len(over):
                firsts.append(int(over[0]))
        return max(2, min(firsts, default=task_length // 4))
    if current.horizon is not None and current.verdict == "vanishing":
        return max(2, current.horizon + 1)
    return None


def _recommend(
    current: Measured, remedies: list[Measured], norms: list[float], task_length: int
) -> tuple[list[str], list[str]]:
    problems, recs = [], []
    if current.verdict == "non-finite":
        reason = next(
            (line.summary.reason for line in current.lines if line.summary.verdict == "non-finite"), ""
        )
        problems.append(f"non-finite gradient: {reason}")
        recs.append("find the NaN or infinity first (the input, the loss, the learning rate): no remedy "
                    "measured here can change a non-finite gradient")  # fmt: skip
        return problems, recs
    if current.verdict == "exploding":
        problems.append(f"exploding: r(k) reaches {current.peak:.3g} (gain {current.gain:.3g}/step)")
        clip = next(r for r in remedies if r.key == "clip")
        tbptt = next((r for r in remedies if r.key == "tbptt" and r.verdict != "not measured"), None)
        tamed = [
            r for r in remedies if r.key not in ("clip", "tbptt") and r.verdict in ("vanishing", "stable")
        ]
        advice = (f"{clip.remedy} ({clip.note}): this batch's norm {_fmt(current.global_norm)} → "
                  f"{_fmt(clip.global_norm)}")  # fmt: skip
        if tbptt is not None:
            advice += f"; {tbptt.remedy} keeps r(k) ≤ {tbptt.peak:.3g}"
        if tamed:
            best = max(tamed, key=lambda r: r.reach)
            advice += (
                f"; {best.remedy} removes the growth (peak r {best.peak:.3g}, horizon {_horizon_words(best)})"
            )
        recs.append(advice)
    spread = max(norms) / max(sorted(norms)[len(norms) // 2], 1e-300) if len(norms) > 1 else 1.0
    if current.verdict != "exploding" and spread > HEAVY_TAIL:
        clip = next(r for r in remedies if r.key == "clip")
        problems.append(
            f"heavy-tailed global norms: the largest of {len(norms)} batches is {spread:.3g}× the median"
        )
        recs.append(f"{clip.remedy} ({clip.note})")
    if current.horizon is not None and current.horizon < task_length and current.verdict != "exploding":
        problems.append(f"horizon {current.horizon} steps < task length {task_length}")
        candidates = [
            r for r in remedies if r.key not in ("clip", "tbptt") and r.verdict in ("vanishing", "stable")
        ]
        better = [r for r in candidates if r.reach > current.reach]
        if better:
            best = max(better, key=lambda r: (r.reach, r.tau if not math.isnan(r.tau) else -1.0))
            also = [r.remedy for r in better if r is not best and r.reach == math.inf]
            text = (
                f"horizon {current.horizon} steps < task length {task_length}: {best.remedy} reaches "
                f"{_horizon_words(best)} on this batch (τ {_fmt(best.tau)} steps, now {_fmt(current.tau)})"
            )
            if also:
                text += f"; so do {', '.join(also)}"
            recs.append(text)
        else:
            tried = ", ".join(r.remedy for r in candidates) or "none applies"
            recs.append(f"horizon {current.horizon} steps < task length {task_length}: none of the remedies "
                        f"measured reaches further ({tried})")  # fmt: skip
    if not problems:
        low = min(
            (min(v for v in line.summary.profile if v is not None) for line in current.lines),
            default=math.nan,
        )
        recs.append(
            f"no change needed: the gradient reaches {_horizon_words(current)} (task length {task_length}) "
            f"with r(k) ≥ {low:.2g}, and the global norm varies by a factor {spread:.3g} over "
            f"{len(norms)} batches"
        )
    return problems, recs


def save_advice(advices: list[Advice], path: str | Path) -> Path:
    """Write the advice as one JSON document {"advice": [...]} (atomically); returns the path."""
    return write_json({"advice": [a.to_dict() for a in advices]}, path)


# ---- rendering ----------------------------------------------------------------------------------


def render_advice(advices: list[Advice], console: Console) -> None:
    """One table per model: each remedy's horizon, τ, gain, σmax, global norm and the change in
    horizon against the current model; then the recommendations."""
    for advice in advices:
        table = Table(
            title=f"{advice.model}: remedies measured on one batch (task length {advice.task_length})"
        )
        for col in (
            "remedy",
            "horizon",
            "Δ horizon",
            "τ",
            "gain",
            "σmax(Whh)",
            "global norm",
            "verdict",
            "note",
        ):
            table.add_column(col, justify="left" if col in ("remedy", "verdict", "note") else "right")
        for m in [advice.current, *advice.remedies]:
            table.add_row(
                m.remedy, "beyond T" if m.horizon is None and m.reach == math.inf else _fmt(m.horizon),
                "" if m is advice.current else _delta(m, advice.current), _fmt(m.tau), _fmt(m.gain),
                _fmt(m.sigma_max), _fmt(m.global_norm), m.verdict, m.note,
            )  # fmt: skip
        console.print(table)
        for rec in advice.recommendations:
            console.print(f"  → {rec}")


def _delta(m: Measured, current: Measured) -> str:
    if m.reach < 0 or current.reach < 0:
        return "-"
    if m.reach == current.reach:
        return "="
    if m.reach == math.inf:
        return "→ beyond T"
    if current.reach == math.inf:
        return f"→ {m.horizon}"
    return f"{m.reach - current.reach:+.0f}"


def plot_advice(advices: list[Advice], path: str | Path, *, title: str | None = None) -> Path:
    """PNG: one panel per model, r(k) of its furthest-reaching line for the model and each remedy."""
    from diagnostics.report import MARKERS, _draw_line, _lag_axis
    from rnnkit.plotting import pyplot

    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(advices), 1)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 5.2), dpi=100, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, advice in zip(axes[0], advices, strict=False):
        peak, lags = 1.0, 2
        for i, m in enumerate([advice.current, *[r for r in advice.remedies if r.key != "clip"]]):
            usable = [line for line in m.lines if line.summary.verdict not in ("non-finite", "no gradient")]
            if not usable:
                continue
            best = max(
                usable, key=lambda line: math.inf if line.summary.horizon is None else line.summary.horizon
            )
            label = f"{m.remedy}: {_horizon_words(m)}"
            color = "black" if m is advice.current else cmap(i % 10)
            peak = max(peak, _draw_line(ax, best, color, MARKERS[i % len(MARKERS)], label))
            lags = max(lags, len(best.summary.profile))
        _lag_axis(ax, peak, lags)
        ax.set_title(f"{advice.model} (task length {advice.task_length})", fontsize=10)
        ax.set_xlabel("steps back from the loss, k + 1")
        ax.set_ylabel("r(k), the furthest-reaching line")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title or "Remedies measured on the same batch and loss (large dot: memory horizon)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
