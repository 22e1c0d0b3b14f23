"""Weight-side statistics: the recurrent matrix's spectrum and where the gradient lands."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from diagnostics.recorder import recurrent_layers

GATE_NAMES = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n"), "RNN_TANH": ("h",), "RNN_RELU": ("h",)}


@dataclass(frozen=True)
class WeightStats:
    """One layer and direction.

    Attributes:
        sigma_max: largest singular value of the whole W_hh [G*H, P].
        gate_sigma_max: largest singular value of each gate's block [H, P].
        gate_spectral_radius: max |eigenvalue| of each gate's block (square blocks only: P = H).
            A linear recurrence h_t = W h_{t-1} multiplies the gradient by at most σ_max per step
            and, over many steps, by about the spectral radius.
        gate_grad_norms: ||∂L/∂θ|| over the rows of each gate in W_ih, W_hh, b_ih, b_hh
            (None before a backward pass).
    """

    module: str
    mode: str
    layer: int
    direction: int
    sigma_max: float
    gate_sigma_max: dict[str, float]
    gate_spectral_radius: dict[str, float]
    gate_grad_norms: dict[str, float] | None


@torch.no_grad()
def weight_statistics(model: nn.Module) -> list[WeightStats]:
    """`WeightStats` for every rnnkit recurrent layer and direction in ``model``."""
    result = []
    for name, m in recurrent_layers(model):
        gates = GATE_NAMES[m.mode]
        H = m.hidden_size
        for layer in range(m.num_layers):
            for direction, suffix in enumerate(("", "_reverse")[: 2 if m.bidirectional else 1]):
                params = {
                    kind: getattr(m, f"{kind}_l{layer}{suffix}", None)
                    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                }
                w_hh = params["weight_hh"].double()
                blocks = {g: w_hh[i * H : (i + 1) * H] for i, g in enumerate(gates)}
                sigma = {g: float(torch.linalg.matrix_norm(b, ord=2)) for g, b in blocks.items()}
                radius = {
                    g: float(torch.linalg.eigvals(b).abs().max())
                    for g, b in blocks.items()
                    if b.shape[0] == b.shape[1]
                }
                grad_norms = None
                if params["weight_hh"].grad is not None:
                    grad_norms = {}
                    for i, g in enumerate(gates):
                        rows = slice(i * H, (i + 1) * H)
                        sq = sum(
                            float(p.grad[rows].double().pow(2).sum())
                            for p in params.values()
                            if p is not None and p.grad is not None
                        )
                        grad_norms[g] = math.sqrt(sq)
                result.append(
                    WeightStats(
                        name,
                        m.mode,
                        layer,
                        direction,
                        float(torch.linalg.matrix_norm(w_hh, ord=2)),
                        sigma,
                        radius,
                        grad_norms,
                    )
                )
    return result


def global_grad_norm(model: nn.Module) -> float | None:
    """sqrt(Σ ||∂L/∂θ||²) over every parameter with a gradient: the norm that clipping sees.

    Read it after ``backward()`` and before ``clip_grad_norm_``. None before any backward pass.
    """
    grads = [p.grad.detach().double() for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
