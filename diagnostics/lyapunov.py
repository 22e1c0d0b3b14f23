"""The Lyapunov spectrum of a recurrence along the trajectory it actually took.

The forward dynamics s_t = f(s_{t-1}, x_t) (s = h, or (h, c) for the LSTM) stretch or shrink a small
perturbation by the state Jacobian J_t = ∂s_t/∂s_{t-1} at every step. The Lyapunov exponents
λ_1 ≥ ... ≥ λ_k are the mean log growth rates per step of the k most expanding directions of the
product J_T ⋯ J_1, computed with the standard QR method (Benettin et al. 1980; Vogt et al. 2022 for
RNNs): carry k orthonormal tangent vectors Q through J_t, re-orthonormalise Q = QR every
``interval`` steps, and average log |R_ii|.

The backward pass multiplies the gradient by the transposed Jacobians J_t^T, whose product has the
same singular values: over long lags ||dL/dh_{T-k}|| falls like exp(λ_1 k). So λ_1 < 0 predicts a
memory horizon of about ln(1e-3) / λ_1 steps, and −1/λ_i is the time scale of direction i.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jvp, vmap

from diagnostics.summary import HORIZON_THRESHOLD

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def lyapunov_exponents(
    step: Step,
    state: torch.Tensor,
    inputs: torch.Tensor,
    k: int,
    *,
    interval: int = 1,
    warmup: int = 0,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The top-k Lyapunov exponents of ``step`` along the trajectory from ``state`` over ``inputs``.

    Args:
        step: s_t = step(s_{t-1} [B, S], x_t): batched, differentiable (forward mode) in s.
        state: s_0 [B, S]. inputs: [T, B, ...], x_t = inputs[t].
        k: how many exponents (at most S).
        interval: re-orthonormalise every this many steps (1: every step; larger is cheaper, and
            the same up to rounding while the product of that many Jacobians stays well-conditioned).
        warmup: steps that only turn Q towards the expanding directions before the averaging starts
            (the error of a random start falls like 1/T without it).
        valid: [T, B] bool, False where a sample has no step t (it keeps its state; its exponents are
            averaged over its own steps). None: all valid.
        generator: for the random orthonormal start.

    Returns:
        [B, k] float64 exponents per step (natural log), each row descending.

    Example:
        >>> W = torch.diag(torch.tensor([0.5, 0.25], dtype=torch.float64))
        >>> lyapunov_exponents(lambda s, x: s @ W.T, torch.ones(1, 2, dtype=torch.float64),
        ...                    torch.zeros(50, 1), 2)     # log 0.5, log 0.25
    """
    B, S = state.shape
    T = inputs.shape[0]
    if not 1 <= k <= S:
        raise ValueError(f"k: expected 1 <= k <= {S} (the state's size), got {k}")
    if interval < 1:
        raise ValueError(f"interval: expected at least 1, got {interval}")
    if not 0 <= warmup < T:
        raise ValueError(f"warmup: expected 0 <= warmup < {T} (the steps), got {warmup}")
    state = state.double()
    start = torch.randn(B, S, k, generator=generator, dtype=torch.float64).to(state.device)
    Q = torch.linalg.qr(start).Q
    logs = torch.zeros(B, k, dtype=torch.float64, device=state.device)
    steps = torch.zeros(B, dtype=torch.float64, device=state.device)
    for t in range(T):
        x_t = inputs[t]

        def advance(s, x_t=x_t):
            return step(s, x_t)

        new = advance(state)
        moved = vmap(lambda v, s=state: jvp(advance, (s,), (v,))[1], in_dims=2, out_dims=2)(Q)
        if valid is not None:
            keep = valid[t].to(state.device)
            new = torch.where(keep[:, None], new, state)
            moved = torch.where(keep[:, None, None], moved, Q)
        state, Q = new, moved
        if t < warmup:
            Q = torch.linalg.qr(Q).Q
            continue
        steps += 1 if valid is None else valid[t].to(steps)
        if (t + 1 - warmup) % interval == 0 or t == T - 1:
            Q, R = torch.linalg.qr(Q)
            logs += torch.log(torch.diagonal(R, dim1=-2, dim2=-1).abs())
    exponents = logs / steps.clamp_min(1)[:, None]
    return exponents.sort(dim=1, descending=True).values


@dataclass(frozen=True)
class Recurrence:
    """One layer and direction of an rnnkit layer, ready to be stepped again.

    Attributes:
        step: s_t = step(s_{t-1}, gx_t), s = h [B, P] or (h, c) concatenated [B, P + H] (LSTM),
            in float64.
        state: s_0 [B, S]. inputs: gx in processing order [T, B, G*H] (a reverse direction's
            first processed step is each sample's last). valid: [T, B] or None (all steps).
        state_names: "h" or "h,c".
    """

    module: str
    mode: str
    layer: int
    direction: int
    step: Step
    state: torch.Tensor
    inputs: torch.Tensor
    valid: torch.Tensor | None
    state_names: str

    def label(self, with_module: bool = False) -> str:
        name = f"{self.module}." if with_module and self.module else ""
        return f"{name}l{self.layer}{'r' if self.direction else ''}"

    def run(self) -> torch.Tensor:
        """The states [T, B, S] in processing order (each sample's state is kept past its length)."""
        s, states = self.state, []
        for t in range(self.inputs.shape[0]):
            new = self.step(s, self.inputs[t])
            s = new if self.valid is None else torch.where(self.valid[t][:, None], new, s)
            states.append(s)
        return torch.stack(states)


def cell_step(
    mode: str, w_hh: torch.Tensor, *, b_hn: torch.Tensor | None = None, w_hr: torch.Tensor | None = None
) -> Step:
    """The step function of one torch.nn-style cell, given gx_t = x_t W_ih^T + biases (float64).

    Args:
        mode: "RNN_TANH", "RNN_RELU", "LSTM" or "GRU". w_hh: [G*H, P]. b_hn: GRU's [H] (inside the
            reset gate). w_hr: the LSTM's projection [P, H].
    """
    w_hh = w_hh.detach().double()
    b_hn = None if b_hn is None else b_hn.detach().double()
    w_hr = None if w_hr is None else w_hr.detach().double()
    P = w_hh.shape[1]
    if mode in ("RNN_TANH", "RNN_RELU"):
        act = torch.tanh if mode == "RNN_TANH" else torch.relu
        return lambda h, gx: act(gx + h @ w_hh.T)
    if mode == "LSTM":

        def lstm(s, gx):
            h, c = s[:, :P], s[:, P:]
            i, f, g, o = (gx + h @ w_hh.T).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            return torch.cat((h if w_hr is None else h @ w_hr.T, c), dim=-1)

        return lstm
    if mode == "GRU":

        def gru(h, gx):
            H = h.shape[-1]
            gh = h @ w_hh.T
            r = torch.sigmoid(gx[:, :H] + gh[:, :H])
            z = torch.sigmoid(gx[:, H : 2 * H] + gh[:, H : 2 * H])
            n_h = gh[:, 2 * H :] if b_hn is None else gh[:, 2 * H :] + b_hn
            n = torch.tanh(gx[:, 2 * H :] + r * n_h)
            return (1 - z) * n + z * h

        return gru
    raise ValueError(f"mode: expected RNN_TANH, RNN_RELU, LSTM or GRU, got {mode!r}")


def _processing_order(x: torch.Tensor, lengths: torch.Tensor | None, reverse: bool):
    # x [T, B, ...] -> (x in the order the direction processes it, valid [T, B] or None)
    T, B = x.shape[:2]
    if lengths is None:
        return (x.flip(0) if reverse else x), None
    lengths = lengths.to(x.device)
    j = torch.arange(T, device=x.device)[:, None]
    valid = j < lengths[None, :]
    if not reverse:
        return x, valid
    t = (lengths[None, :] - 1 - j).clamp_min(0)  # [T, B]
    index = t.reshape(T, B, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index), valid


def recurrences(module: nn.Module, *args, name: str = "", **kwargs) -> list[Recurrence]:
    """Every layer and direction of an rnnkit RNN, LSTM or GRU on this input, as `Recurrence`s.

    The layers above the first are driven by the outputs of the layer below (without dropout, as in
    eval mode). Arguments as the module's ``forward`` (input, hx, lengths=...).
    """
    acts = module.gate_activations(*args, **kwargs)
    D = 2 if module.bidirectional else 1
    mode = module.mode
    result = []
    for a in acts:
        B = a.y.shape[1]
        for d, suffix in enumerate(("", "_reverse")[:D]):
            w_hr = getattr(module, f"weight_hr_l{a.layer}{suffix}", None)
            step = cell_step(
                mode,
                getattr(module, f"weight_hh_l{a.layer}{suffix}"),
                b_hn=None if a.b_hn is None else a.b_hn[d],
                w_hr=w_hr,
            )
            P = a.y.shape[-1]
            h0 = (
                torch.zeros(B, P, dtype=torch.float64, device=a.y.device)
                if a.h0 is None
                else a.h0[d].double()
            )
            state = h0
            if mode == "LSTM":
                H = module.hidden_size
                c0 = (
                    torch.zeros(B, H, dtype=torch.float64, device=a.y.device)
                    if a.c0 is None
                    else a.c0[d].double()
                )
                state = torch.cat((h0, c0), dim=-1)
            inputs, valid = _processing_order(a.gx[:, :, d].double(), a.lengths, reverse=d == 1)
            names = "h,c" if mode == "LSTM" else "h"
            result.append(Recurrence(name, mode, a.layer, d, step, state, inputs, valid, names))
    return result


@dataclass(frozen=True)
class LyapunovSpectrum:
    """The top-k Lyapunov exponents of one layer and direction.

    Attributes:
        label: e.g. "l0", "l1r" (layer, r for reverse), the module's name first in a model with
            several recurrent modules.
        state: "h", or "h,c" for the LSTM (the exponents of the joint state).
        exponents: λ_1 ≥ ... ≥ λ_k per step (natural log), the mean over samples.
        spread: their standard deviation over the samples (0 with one sample).
        time_scales: −1/λ_i in steps, the steps over which a perturbation along direction i shrinks
            by e (inf for λ_i >= 0: it does not shrink).
        predicted_horizon: ln(1e-3) / λ_1, the lag where exp(λ_1 k) falls below the horizon
            threshold; None for λ_1 >= 0.
        steps: the steps per sample averaged over. samples: how many samples. interval: steps
            between re-orthonormalisations.
    """

    label: str
    module: str
    mode: str
    layer: int
    direction: int
    state: str
    exponents: list[float]
    spread: list[float]
    time_scales: list[float]
    predicted_horizon: float | None
    steps: float
    samples: int
    interval: int


def _spectrum(rec: Recurrence, label: str, exponents: torch.Tensor, spread: torch.Tensor, steps: float,
              samples: int, interval: int) -> LyapunovSpectrum:  # fmt: skip
    lams = exponents.tolist()
    scales = [-1.0 / lam if lam < 0 else math.inf for lam in lams]
    horizon = math.log(HORIZON_THRESHOLD) / lams[0] if lams[0] < 0 else None
    return LyapunovSpectrum(
        label, rec.module, rec.mode, rec.layer, rec.direction, rec.state_names, lams, spread.tolist(),
        scales, horizon, steps, samples, interval,
    )  # fmt: skip


def lyapunov_spectrum(
    module: nn.Module,
    *args,
    k: int = 16,
    samples: int | None = 8,
    interval: int = 1,
    warmup: int = 0,
    generator: torch.Generator | None = None,
    name: str = "",
    with_module: bool = False,
    **kwargs,
) -> list[LyapunovSpectrum]:
    """The top-k Lyapunov exponents of every layer and direction of an rnnkit layer on this input.

    Args:
        module: an rnnkit RNN, LSTM or GRU. *args, **kwargs: its forward's (input, hx, lengths=...).
        k: exponents per layer (at most the state's size: H, or P + H for the LSTM).
        samples: use the first this many samples of the batch (None: all).
        interval, warmup: as `lyapunov_exponents`. generator: for the random start.
        name, with_module: the module's name in its model, and whether labels carry it.

    Returns:
        One `LyapunovSpectrum` per layer and direction.

    Example:
        >>> spectra = lyapunov_spectrum(rnnkit.LSTM(1, 128), x, k=16)
        >>> spectra[0].exponents[0], spectra[0].predicted_horizon
    """
    if k < 1:
        raise ValueError(f"k: expected at least 1, got {k}")
    if samples is not None and samples < 1:
        raise ValueError(f"samples: expected at least 1 or None (all), got {samples}")
    result = []
    for rec in recurrences(module, *args, name=name, **kwargs):
        n = rec.state.shape[0] if samples is None else min(samples, rec.state.shape[0])
        kk = min(k, rec.state.shape[1])
        valid = None if rec.valid is None else rec.valid[:, :n]
        per_sample = lyapunov_exponents(
            rec.step, rec.state[:n], rec.inputs[:, :n], kk, interval=interval, warmup=warmup, valid=valid,
            generator=generator,
        )  # fmt: skip
        counted = rec.inputs[warmup:, :n] if valid is None else valid[warmup:]
        steps = float(counted.shape[0] if valid is None else counted.sum(0).double().mean())
        spread = per_sample.std(0, unbiased=False) if n > 1 else torch.zeros(kk, dtype=torch.float64)
        result.append(_spectrum(rec, rec.label(with_module), per_sample.mean(0), spread, steps, n, interval))
    return result


def spectra_of(
    model: nn.Module, inputs: dict[str, tuple[Sequence, dict]], **options
) -> list[LyapunovSpectrum]:
    """`lyapunov_spectrum` for every recurrent module of ``model`` whose forward input was captured
    (``GradientFlowRecorder.inputs``: name -> (args, kwargs))."""
    many = len(inputs) > 1
    result = []
    for name, (args, kwargs) in inputs.items():
        module = model.get_submodule(name)
        result += lyapunov_spectrum(module, *args, name=name, with_module=many, **options, **kwargs)
    return result
