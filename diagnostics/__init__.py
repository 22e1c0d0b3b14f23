"""Gradient flow back through time, from the per-step gradients that rnnkit's backward computes.

Reads what the backward pass records (`rnnkit.StepGradients`); never reaches into kernels.

    >>> from diagnostics import GradientFlowRecorder
    >>> with GradientFlowRecorder(model) as rec:
    ...     loss_fn(model(x), y).backward()
    >>> rec.records[0].mean_by_lag()          # ||dL/dh|| k steps back from the loss

    >>> report = diagnose(model, loss_fn, batch)  # horizon, τ, gates, weights, Lyapunov spectrum
    >>> advice = advise(model, loss_fn, [batch], task_length=T)   # remedies measured, recommendations
"""

from diagnostics.advise import Advice, advise
from diagnostics.gates import GateStats, gate_statistics
from diagnostics.gradflow import diagnose
from diagnostics.lyapunov import LyapunovSpectrum, lyapunov_spectrum
from diagnostics.probes import jacobian_norms
from diagnostics.recorder import GradientFlowRecorder, StepNorms
from diagnostics.report import GradientFlowReport, plot, render, save_json
from diagnostics.summary import (
    ProfileSummary,
    decay_profile,
    decay_time,
    mean_gain,
    memory_horizon,
    summarize,
)
from diagnostics.weights import WeightStats, global_grad_norm, weight_statistics

__all__ = [
    "Advice",
    "GateStats",
    "GradientFlowRecorder",
    "GradientFlowReport",
    "LyapunovSpectrum",
    "ProfileSummary",
    "StepNorms",
    "WeightStats",
    "advise",
    "decay_profile",
    "decay_time",
    "diagnose",
    "gate_statistics",
    "global_grad_norm",
    "jacobian_norms",
    "lyapunov_spectrum",
    "mean_gain",
    "memory_horizon",
    "plot",
    "render",
    "save_json",
    "summarize",
    "weight_statistics",
]
