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
a), so `expected_lstm` runs it: a loop of torch ops on any device, differentiable by autograd. Its
per-step record (the layers' `register_step_grad_hook` in eval mode) is kept by hooks on every
step's h_t and c_t and handed over by a node that backward reaches after the first step.
"""

from __future__ import annotations

import torch

from kernels import cpu
from rnnkit._checks import check_probability
from rnnkit.autograd import StepGradients, StepGradientsHook, StepRecord, no_autocast
from rnnkit.functional import _check_common

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


def expected_lstm(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    *,
    p: float,
    w_hr: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    record: StepGradientsHook | None = None,
    states: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The LSTM at inference with cell zoneout p: the input gate scaled by 1 - p, the forget gate
    p + (1 - p) f. Arguments and layout as `rnnkit.functional.lstm`'s (``record`` too: called during
    backward with every step's dL/dh_t and dL/dc_t); p = 0 is the plain LSTM. Without a gradient,
    projection or lengths, fp32 on the CPU runs the C step (a validation pass of pixel MNIST).

    Returns:
        y [T, B, D, P], h_n [D, B, P], c_n [D, B, H], the gates the cell applied [T, B, D, 4H]
        (i', f', g, o) and c_t [T, B, D, H] (None for both with ``states=False``: the layer's forward
        needs neither); per-step tensors zero past each length. In gx's dtype, computed in float32
        (float64 for float64), differentiable.
    """
    p = check_probability("p", p)
    B, D, H, P, lengths = _check_common(gx, w_hh, "lstm", None if w_hr is None else w_hr.shape[1], lengths)
    with no_autocast(gx.device.type):  # float32 math under autocast too, as the kernels
        steps = None
        if record is not None and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            steps = _StepRecorder(gx, record, D, B, H, P, lengths)
        return _expected_lstm(gx, w_hh, h0, c0, p, w_hr, lengths, B, D, H, P, steps, states)


class _StepRecorder:
    """The per-step record of the expectation's torch ops: hooks keep the gradient of each step's
    h_t and c_t as backward reaches them (steps it never reaches stay zero: no gradient flows there),
    and `_Fence`, whose 0 every direction's initial state adds, hands them to the record: backward
    reaches it only after the first step of every direction that the loss depends on."""

    def __init__(self, gx, record, D, B, H, P, lengths) -> None:
        T = gx.shape[0]
        self.record, self.lengths = record, lengths
        self.h = gx.new_zeros(T, B, D, P, dtype=torch.float32)
        self.c = gx.new_zeros(T, B, D, H, dtype=torch.float32)

    def fence(self, dtype: torch.dtype) -> torch.Tensor:
        # 0, from a leaf of its own: the fence is in the graph even where no state needs a gradient
        anchor = self.h.new_zeros((), dtype=dtype).requires_grad_()
        return _Fence.apply(anchor, self)

    def keep(self, h: torch.Tensor, c: torch.Tensor, t: int, d: int) -> None:
        def into(buffer: torch.Tensor):
            def hook(grad: torch.Tensor) -> None:  # None: the gradient itself flows on unchanged
                buffer.copy_(grad)

            return hook

        h.register_hook(into(self.h[t, :, d]))
        c.register_hook(into(self.c[t, :, d]))

    def deliver(self) -> None:
        if isinstance(self.record, StepRecord) and not self.record.active:
            return
        self.record(StepGradients(h=self.h, c=self.c, lengths=self.lengths))


class _Fence(torch.autograd.Function):
    # 0 in the forward; its backward hands the kept step gradients to the record
    @staticmethod
    def forward(ctx, anchor, recorder):
        ctx.recorder = recorder
        return torch.zeros_like(anchor)

    @staticmethod
    def backward(ctx, grad):
        ctx.recorder.deliver()
        return torch.zeros_like(grad), None


def _expected_lstm(gx, w_hh, h0, c0, p, w_hr, lengths, B, D, H, P, steps=None, states=True):
    T = gx.shape[0]
    ct = torch.float64 if gx.dtype == torch.float64 else torch.float32
    ys, hs, cs, gates, cells = [], [], [], [], []
    zero = None if steps is None else steps.fence(ct)
    # inference without a gradient, projection or lengths (a validation pass): the C step, where it
    # applies (pixel MNIST's 6000 examples: 34 s of torch ops a pass, one thread)
    plain = steps is None and w_hr is None and lengths is None and T > 0
    if plain and torch.is_grad_enabled():
        plain = not any(t is not None and t.requires_grad for t in (gx, w_hh, h0, c0))
    for d in range(D):
        w = w_hh[d].to(ct)
        w_r = None if w_hr is None else w_hr[d].to(ct)
        h = gx.new_zeros(B, P, dtype=ct) if h0 is None else h0[d].to(ct)
        c = gx.new_zeros(B, H, dtype=ct) if c0 is None else c0[d].to(ct)
        done = cpu.expected_lstm(gx[:, :, d].to(ct), w, h, c, p, d == 1, states) if plain else None
        if done is not None:
            y_d, c_n, g_d, c_d = done
            ys.append(y_d)
            hs.append(y_d[T - 1 if d == 0 else 0])
            cs.append(c_n)
            if states:
                gates.append(g_d)
                cells.append(c_d)
            continue
        if zero is not None:
            h = h + zero  # the fence's backward comes after this direction's steps
        y_d, g_d, c_d = [None] * T, [None] * T, [None] * T
        for t in range(T) if d == 0 else reversed(range(T)):
            pre = torch.addmm(gx[t, :, d].to(ct), h, w.T)
            i, f, g, o = pre.chunk(4, dim=-1)
            i = (1 - p) * torch.sigmoid(i)
            f = p + (1 - p) * torch.sigmoid(f)
            g, o = torch.tanh(g), torch.sigmoid(o)
            c_new = f * c + i * g
            h_new = o * torch.tanh(c_new)
            if w_r is not None:
                h_new = h_new @ w_r.T
            if steps is not None:
                steps.keep(h_new, c_new, t, d)
            step_gates = torch.cat((i, f, g, o), dim=-1)
            if lengths is not None:
                v = (t < lengths)[:, None]
                h_new, c_new = torch.where(v, h_new, 0.0), torch.where(v, c_new, 0.0)
                step_gates = torch.where(v, step_gates, 0.0)
                h, c = torch.where(v, h_new, h), torch.where(v, c_new, c)
            else:
                h, c = h_new, c_new
            y_d[t], g_d[t], c_d[t] = h_new, step_gates, c_new
        ys.append(torch.stack(y_d))
        if states:
            gates.append(torch.stack(g_d))
            cells.append(torch.stack(c_d))
        hs.append(h)
        cs.append(c)
    dtype = gx.dtype
    return (
        _stack(ys, 2).to(dtype),
        torch.stack(hs).to(dtype),
        torch.stack(cs).to(dtype),
        _stack(gates, 2).to(dtype) if states else None,
        _stack(cells, 2).to(dtype) if states else None,
    )


def _stack(steps: list[torch.Tensor], dim: int) -> torch.Tensor:
    # the directions' [T, B, X] along dim; one direction as a view (no copy of a [T, B, X] output)
    return steps[0].unsqueeze(dim) if len(steps) == 1 else torch.stack(steps, dim=dim)
