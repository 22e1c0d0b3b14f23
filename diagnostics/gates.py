"""Forward-side statistics: forget-gate memory and saturated units.

Saturation: a sigmoid gate is saturated outside [0.01, 0.99] (its derivative below ~0.01), a tanh
unit when |tanh| > 0.99 (derivative below ~0.02); a relu unit is dead at 0. Fractions are over
every valid step, sample and unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diagnostics.weights import GATE_NAMES

SIGMOID_BAND = (0.01, 0.99)
TANH_LIMIT = 0.99


@dataclass(frozen=True)
class GateStats:
    """One layer and direction.

    Attributes:
        saturation: fraction of saturated values per gate or quantity (LSTM: i, f, g, o and
            tanh(c); GRU: r, z, n; RNN tanh: h; RNN relu: "dead" h = 0).
        forget_mean: LSTM mean forget gate f (None for other cells).
        forget_time_constants: LSTM per-unit 1 / (1 - f̄_u), the steps over which unit u keeps
            a memory, f̄_u its mean forget gate (None for other cells).
    """

    module: str
    mode: str
    layer: int
    direction: int
    saturation: dict[str, float]
    forget_mean: float | None
    forget_time_constants: list[float] | None


def forget_time_constant(forget: torch.Tensor) -> torch.Tensor:
    """1 / (1 - f): the number of steps over which a forget gate f keeps a memory."""
    return 1.0 / (1.0 - forget.double()).clamp_min(torch.finfo(torch.float64).eps)


def _sigmoid_saturated(x: torch.Tensor) -> torch.Tensor:
    return (x < SIGMOID_BAND[0]) | (x > SIGMOID_BAND[1])


def _fraction(flags: torch.Tensor, valid: torch.Tensor) -> float:
    # flags [T, B, X], valid [T, B, 1]
    count = valid.sum() * flags.shape[-1]
    return float((flags & valid).sum() / count) if count else float("nan")


@torch.no_grad()
def gate_statistics(module: nn.Module, *args, name: str = "", **kwargs) -> list[GateStats]:
    """`GateStats` for every layer and direction of one rnnkit layer on the given input.

    Args:
        module: an rnnkit RNN, LSTM or GRU.
        *args, **kwargs: what its forward takes (input, hx, lengths=...).
        name: the module's name in its model, for the labels.

    Example:
        >>> stats = gate_statistics(lstm, x)
        >>> stats[0].forget_mean, stats[0].saturation["f"]
    """
    gates_names = GATE_NAMES[module.mode]
    H = module.hidden_size
    result = []
    for acts in module.gate_activations(*args, **kwargs):
        T, B, D, _ = acts.y.shape
        if acts.lengths is None:
            valid = torch.ones(T, B, 1, dtype=torch.bool, device=acts.y.device)
        else:
            valid = (torch.arange(T, device=acts.y.device)[:, None] < acts.lengths[None, :])[..., None]
        for d in range(D):
            saturation, forget_mean, constants = {}, None, None
            if acts.gates is not None:
                for i, g in enumerate(gates_names):
                    values = acts.gates[:, :, d, i * H : (i + 1) * H].float()
                    tanh_like = g in ("g", "n")
                    flags = values.abs() > TANH_LIMIT if tanh_like else _sigmoid_saturated(values)
                    saturation[g] = _fraction(flags, valid)
            if acts.cell is not None:
                saturation["tanh(c)"] = _fraction(
                    torch.tanh(acts.cell[:, :, d].float()).abs() > TANH_LIMIT, valid
                )
                forget = acts.gates[:, :, d, H : 2 * H].double()
                per_unit = (forget * valid).sum((0, 1)) / valid.sum()
                forget_mean = float(per_unit.mean())
                constants = forget_time_constant(per_unit).tolist()
            if module.mode == "RNN_TANH":
                saturation["h"] = _fraction(acts.y[:, :, d].float().abs() > TANH_LIMIT, valid)
            elif module.mode == "RNN_RELU":
                saturation["dead"] = _fraction(acts.y[:, :, d] == 0, valid)
            result.append(GateStats(name, module.mode, acts.layer, d, saturation, forget_mean, constants))
    return result
