"""||∂h_T/∂h_t|| without a loss: random probe vectors through the backward pass.

For a probe v ~ N(0, I) at the last step's output, the backward pass computes vᵀ ∂h_T/∂h_t for
every step; E ||Jᵀ v||² = ||J||_F², so the root mean square over probes estimates the Frobenius
norm of the Jacobian ∂h_T/∂h_t (and ∂h_T/∂c_t for the LSTM), per sample.
"""

from __future__ import annotations

import torch
from torch import nn

from diagnostics.recorder import GradientFlowRecorder, StepNorms


def jacobian_norms(
    module: nn.Module,
    *args,
    probes: int = 8,
    generator: torch.Generator | None = None,
    **kwargs,
) -> list[StepNorms]:
    """Estimate ||∂h_T/∂h_t||_F for every step of an rnnkit layer, by ``probes`` random vectors.

    Args:
        module: an rnnkit RNN, LSTM or GRU (time-major or batch_first, not packed).
        *args, **kwargs: its forward's arguments (input, hx, lengths=...).
        probes: number of random vectors; the relative error falls as 1/sqrt(probes).
        generator: for the probes.

    Returns:
        One `StepNorms` per layer, direction and path, norms [B, T] the estimated Jacobian norms
        of the last step's output (the whole output vector at t = T-1) with respect to h_t.

    Example:
        >>> lines = jacobian_norms(lstm, x, probes=16)
    """
    if probes < 1:
        raise ValueError(f"probes: expected at least 1, got {probes}")
    with torch.enable_grad():
        output, _ = module(*args, **kwargs)
        last = output[:, -1] if module.batch_first else output[-1]
        leaf = next(p for p in module.parameters() if p.requires_grad)
        sums: dict[tuple, torch.Tensor] = {}
        template: dict[tuple, StepNorms] = {}
        for _ in range(probes):
            v = torch.randn(last.shape, generator=generator, dtype=torch.float32).to(last)
            with GradientFlowRecorder(module, capture_inputs=False) as rec:
                torch.autograd.grad(last, leaf, v, retain_graph=True, allow_unused=True)
            for s in rec.records:
                key = (s.layer, s.direction, s.path)
                sums[key] = sums.get(key, 0) + s.norms.pow(2)
                template[key] = s
    return [
        StepNorms(s.module, s.mode, s.layer, s.direction, s.path, (sums[k] / probes).sqrt(), s.lengths)
        for k, s in template.items()
    ]
