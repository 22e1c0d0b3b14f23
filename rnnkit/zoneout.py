"""Zoneout of the LSTM's cell state (Krueger et al. 2016, "Zoneout: regularizing RNNs by randomly
preserving hidden activations"), the layers' ``cell_zoneout=p``.

In training, at every step each unit of each sequence (and direction) keeps its previous cell state
with probability p, a fresh draw for every step:

    c_t = d ⊙ c_{t-1} + (1 - d) ⊙ (f ⊙ c_{t-1} + i ⊙ g),   d ~ Bernoulli(p);   h_t = o ⊙ tanh(c_t)

At inference the cell takes the expectation, c_t = p c_{t-1} + (1 - p)(f ⊙ c_{t-1} + i ⊙ g), as the
paper does (dropout's rescaling, for a unit that keeps its state).

Training runs every backend's fused recurrence unchanged. A zoned unit's step is the LSTM's own step
with i = 0 and f = 1, and `zone_gates` gets exactly that from the input pre-activations: it moves a
zoned unit's input-gate pre-activation down by SATURATE and its forget gate's up, where σ is 0 and 1
in float32 (the CPU step's exp stops at e^88: there i is 4e-39, a denormal, which the reference
flushes to 0). The backward needs nothing either: the derivative each backend takes of σ is
s (1 - s), 0 at s = 0 and 1, so those two pre-activations get no gradient, and
δc_{t-1} = f δc_t = δc_t, which is zoneout's derivative.

Inference has no mask to fold into the pre-activations (f' = p + (1 - p) σ(a) is no σ of a shifted
a): every backend's LSTM takes ``zoneout=p`` and applies i' = (1 - p) σ(a_i), f' = p + (1 - p) σ(a_f)
itself, forward and backward (`kernels.reference.lstm_fwd`), so the expectation runs on the layer's
backend and records its steps as any other call.
"""

from __future__ import annotations

import torch

from kernels import cpu
from rnnkit._checks import check_probability

# the shift of a zoned unit's i and f pre-activations: σ(±SATURATE + a) is 1 or 0 in float32 for any
# |a| < 2^13 (|a| is at most |x W_ih| + Σ|W_hh| + |b|: tens), and it stays finite in float16
SATURATE = 2.0**14


def sample(gx: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One zoneout mask for a training forward: [T, B, D, H] bool, True where a unit keeps its cell
    state at that step (probability p), for gx [T, B, D, 4H]. For fp32 on the CPU one C pass draws it
    (`kernels.cpu.bernoulli`, from a key the generator gives: as reproducible as torch.rand, and
    30x faster at pixel MNIST's size); elsewhere torch.rand."""
    p = check_probability("p", p, one=True)
    T, B, D, G = gx.shape
    drawn = cpu.bernoulli(gx, (T, B, D, G // 4), p, generator)
    if drawn is not None:
        return drawn
    return torch.rand(T, B, D, G // 4, device=gx.device, generator=generator) < p


def zone_gates(gx: torch.Tensor, zoned: torch.Tensor) -> torch.Tensor:
    """gx [T, B, D, 4H] (gates i, f, g, o) with the units of ``zoned`` [T, B, D, H] (bool) made to keep
    their cell state: i's pre-activation lowered by SATURATE, f's raised. A new tensor; the gradient
    reaches gx unchanged (and is zero at the zoned i and f, from the recurrence's backward)."""
    H = gx.shape[-1] // 4
    if zoned.shape != (*gx.shape[:-1], H) or zoned.dtype != torch.bool:
        raise ValueError(
            f"zoned: expected a bool tensor of shape {[*gx.shape[:-1], H]}, "
            f"got {zoned.dtype} {list(zoned.shape)}"
        )
    return _ZoneGates.apply(gx, zoned)


class _ZoneGates(torch.autograd.Function):
    # the sum's backward passes the gradient as it is (slices put together with cat cost a copy of gx
    # in the backward too: 0.5 s a step of pixel MNIST on one CPU thread)
    @staticmethod
    def forward(ctx, gx, zoned):
        # fp32 on the CPU: one C pass (pixel MNIST, T 784, B 128, H 128, one thread of an Intel Xeon:
        # about 250 ms a step in torch's ops, which build a float mask of gx's size first)
        out = cpu.zone_gates(gx, zoned, SATURATE)
        if out is not None:
            return out
        signs = gx.new_tensor([-SATURATE, SATURATE, 0.0, 0.0]).view(4, 1)  # per gate i, f, g, o
        return gx + (zoned.unsqueeze(-2) * signs).view(gx.shape)

    @staticmethod
    def backward(ctx, grad):
        return grad, None
