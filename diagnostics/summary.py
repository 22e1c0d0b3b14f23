"""Summaries of a gradient-norm profile: decay, memory horizon, decay time, gain, verdict.

A profile is indexed by the lag k = 0, 1, ..., K-1: the number of steps back from the step where
the gradient enters (the loss step; for a reverse direction, its last processed step, t = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

HORIZON_THRESHOLD = 1e-3


def decay_profile(norms: torch.Tensor) -> torch.Tensor:
    """r(k) = ||δ_{T-k}|| / ||δ_T||: the gradient norm k steps back, relative to the loss step.

    Args:
        norms: [K] mean gradient norm at each lag k (k = 0 is the loss step). NaN: no sample
            reaches that lag.

    Returns:
        [K] float64 r(k); all NaN when no gradient arrives at the loss step (||δ_T|| = 0).
    """
    norms = norms.double()
    if not norms[0] > 0:
        return torch.full_like(norms, math.nan)
    return norms / norms[0]


def memory_horizon(r: torch.Tensor, threshold: float = HORIZON_THRESHOLD) -> int | None:
    """The first lag k where r(k) < threshold (1e-3), or None: the gradient reaches beyond T."""
    below = torch.nonzero(r < threshold)
    return int(below[0]) if len(below) else None


def _fit_range(r: torch.Tensor) -> torch.Tensor:
    # lags with a usable logarithm: finite, positive, above float64 underflow
    return torch.nonzero(torch.isfinite(r) & (r > 1e-300)).flatten()


def decay_time(r: torch.Tensor) -> float:
    """τ from the least-squares fit log r(k) ≈ a - k/τ over every lag with r(k) > 0.

    Returns:
        τ in steps: r falls by e every τ steps; ``inf`` when the fit does not decrease; NaN
        with fewer than two usable lags.
    """
    k = _fit_range(r)
    if len(k) < 2:
        return math.nan
    x = k.double()
    y = torch.log(r[k])
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return -1.0 / slope if slope < 0 else math.inf


def mean_gain(r: torch.Tensor) -> float:
    """Geometric mean of the per-step ratio r(k+1)/r(k): (r(K')/r(0))^(1/K'), K' the last usable lag."""
    k = _fit_range(r)
    if len(k) < 2:
        return math.nan
    last = int(k[-1])
    return float(torch.exp(torch.log(r[last]) / last))


@dataclass(frozen=True)
class ProfileSummary:
    """What a decay profile says.

    Attributes:
        profile: r(k) for k = 0..K-1.
        horizon: first lag with r(k) < 1e-3; None when the gradient reaches beyond T.
        tau: decay time in steps from the log-linear fit (inf: no decay).
        gain: mean per-step gain (geometric mean of r(k+1)/r(k)).
        peak: max r(k).
        verdict: "vanishing", "stable", "exploding", "non-finite" (a NaN or infinite gradient), or
            "no gradient".
        reason: the numbers behind the verdict, in words.
    """

    profile: list[float]
    horizon: int | None
    tau: float
    gain: float
    peak: float
    verdict: str
    reason: str


def summarize(
    norms: torch.Tensor, threshold: float = HORIZON_THRESHOLD, *, nonfinite: tuple[int, int] | None = None
) -> ProfileSummary:
    """Summarise a profile of mean gradient norms by lag ([K], k = 0 at the loss step).

    Verdict: "non-finite" when a gradient is NaN or infinite (``nonfinite``, the (lag, step) where a
    sample's first is, from `StepNorms.first_nonfinite`, or an infinite mean norm); "no gradient"
    when none reaches the loss step; "exploding" when r(k) rises above 1/threshold (1e3) within the
    sequence; "vanishing" when it falls below threshold (1e-3), at the memory horizon; "stable"
    otherwise.

    Example:
        >>> summarize(0.9 ** torch.arange(100.0)).horizon      # 0.9^66 < 1e-3
        66
    """
    if norms.dim() != 1 or len(norms) == 0:
        raise ValueError(f"norms: expected a profile [K] with K >= 1 lags, got shape {list(norms.shape)}")
    if nonfinite is None and torch.isinf(norms).any():
        nonfinite = (int(torch.nonzero(torch.isinf(norms))[0]), -1)
    if nonfinite is not None:
        k, t = nonfinite
        where = f"k = {k} steps back from the loss" + (f" (time step t = {t})" if t >= 0 else "")
        reason = f"the gradient is NaN or infinite from {where}: the loss or the input is not finite"
        return ProfileSummary(
            decay_profile(norms).tolist(), None, math.nan, math.nan, math.nan, "non-finite", reason
        )
    r = decay_profile(norms)
    K = len(r)
    if not torch.isfinite(r[0]):
        return ProfileSummary(
            r.tolist(), None, math.nan, math.nan, math.nan, "no gradient", "no gradient reaches the loss step"
        )
    horizon, tau, gain = memory_horizon(r, threshold), decay_time(r), mean_gain(r)
    peak = float(torch.nan_to_num(r, nan=0.0).max())
    if peak > 1 / threshold:
        first = int(torch.nonzero(r > 1 / threshold)[0])
        verdict, reason = "exploding", f"r(k) passes {1 / threshold:g} at lag {first} (gain {gain:.3g}/step)"
    elif horizon is not None:
        verdict, reason = "vanishing", f"r(k) < {threshold:g} from lag {horizon} (τ = {tau:.3g} steps)"
    else:
        low = float(torch.nan_to_num(r, nan=math.inf).min())
        verdict, reason = "stable", f"r(k) stays within [{low:.2g}, {peak:.3g}] over {K} steps"
    return ProfileSummary(r.tolist(), horizon, tau, gain, peak, verdict, reason)
