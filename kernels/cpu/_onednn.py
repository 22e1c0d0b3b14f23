"""The CPU backend's large fp32 products through oneDNN, where it is faster than torch's own (MKL).

`RowProducts` is ``x [D, B, K] @ w[d]ᵀ (+ add)`` with each direction's weight reordered once per call
and reused T times; `linear` is `F.linear` with its input gradient on oneDNN too; `sum_over_rows` is
a weight gradient that reads a gate-major gradient as it lies. oneDNN runs a product only where
`SETTINGS.onednn` chose it (AMD CPUs with AVX-512) and it is large enough to gain (`ONEDNN_MIN_FLOP`);
the measurements behind both rules are in docs/cpu-backend.md.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kernels.cpu import _memory
from kernels.cpu._config import SETTINGS, eager_cpu

ONEDNN_MIN_FLOP = 4e6


@functools.cache
def _linear_op():
    # torch's oneDNN linear (+ fused add) and its weight reorder, or None where this torch lacks them
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        return ops._linear_pointwise, ops._reorder_linear_weight
    except (AttributeError, RuntimeError):
        return None


class RowProducts:
    """``x @ w[d]ᵀ (+ add)`` for every direction d, for many x and one ``w`` [D, N, K]."""

    def __init__(self, w: torch.Tensor, rows: int) -> None:
        """``rows``: the B of the products to come (oneDNN picks its blocking for it)."""
        self.w_t = w.transpose(1, 2)  # [D, K, N], for torch's bmm
        self.packed = None
        if rows > 0 and _usable(w, rows, w.shape[1], w.shape[2]):
            reorder = _linear_op()[1]
            self.packed = [reorder(w[d].contiguous(), rows) for d in range(w.shape[0])]

    def __call__(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """x [D, B, K] -> [D, B, N], plus ``add`` [D, B, N] when given."""
        if self.packed is None or x.shape[1] == 0:
            return torch.bmm(x, self.w_t) if add is None else torch.baddbmm(add, x, self.w_t)
        linear = _linear_op()[0]
        if add is None:
            out = [linear(x[d], w, None, "none", [], "") for d, w in enumerate(self.packed)]
        else:
            out = [linear.binary(x[d], add[d], w, None, "add") for d, w in enumerate(self.packed)]
        return out[0].unsqueeze(0) if len(out) == 1 else torch.stack(out)


def _pooled(x: torch.Tensor, rows: int, N: int, *others: torch.Tensor | None) -> bool:
    # torch's product into a pooled buffer: an output the pool takes
    return eager_cpu(x, *others) and 4 * rows * N >= _memory.MIN_BYTES


def _usable(t: torch.Tensor, rows: int, N: int, K: int, *others: torch.Tensor | None) -> bool:
    # oneDNN for a [rows, K] x [K, N] product: chosen for this CPU (SETTINGS.onednn), large enough, and
    # torch has the operator
    return (
        SETTINGS.onednn
        and eager_cpu(t, *others)
        and 2 * rows * N * K >= ONEDNN_MIN_FLOP
        and _linear_op() is not None
    )


# the input projection's forward into a pooled buffer (MKL's product, or one pass of an outer product
# at K 1) below this many input features, where oneDNN is used too: oneDNN's own output is fresh memory,
# whose first touch is most of the work at small K (one thread of an AMD EPYC with AVX-512, rows
# 100352, N 512, two trainings beside: K 1 144 against 12 ms, K 8 179 vs 89, K 128 362 vs 265; level
# at K 256-512)
POOL_MAX_K = 256


def _forward_on_onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> bool:
    # `_Linear`'s forward x [rows, K] @ wᵀ on oneDNN: where `_usable`, but for a narrow K that the
    # pool takes (POOL_MAX_K)
    (rows, K), N = x.shape, w.shape[0]
    if K < POOL_MAX_K and _pooled(x, rows, N, w, b):
        return False
    return _usable(x, rows, N, K, w, b)


def _linear_grads(ctx, grad, x, w):
    # the gradients of x wᵀ + b in torch's ops (a double backward differentiates them)
    needs = ctx.needs_input_grad
    dx = grad @ w if needs[0] else None
    dw = grad.t() @ x if needs[1] else None
    db = grad.sum(0) if ctx.has_bias and needs[2] else None
    return dx, dw, db


class _Linear(torch.autograd.Function):
    # x [M, K] @ wᵀ + b: on oneDNN where it is used (but a narrow K into the pool), else torch's
    # product into a pooled buffer (huge pages, recycled: the first touch of a fresh [T·B, 4H] costs
    # about as much as the product at small K); backward: dx on oneDNN where it is used, dw and db
    # torch's
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        rows, K = x.shape
        if _forward_on_onednn(x, w, b):
            linear, reorder = _linear_op()
            return linear(x, reorder(w, rows), b, "none", [], "")
        out = _memory.empty(x, rows, w.shape[0])
        if K == 1:  # an outer product: one pass (addmm copies the bias in first, then adds the product)
            return torch.mul(x, w.t(), out=out) if b is None else torch.addcmul(b, x, w.t(), out=out)
        return torch.mm(x, w.t(), out=out) if b is None else torch.addmm(b, x, w.t(), out=out)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: torch's products, which autograd differentiates
            return _linear_grads(ctx, grad, x, w)
        return _Linear._fast_backward(ctx, grad, x, w)

    @staticmethod
    def _fast_backward(ctx, grad, x, w):
        # without a graph (backward runs in no_grad): dx on oneDNN where it is used
        (rows, K), N = x.shape, w.shape[0]
        dx = dw = db = None
        if grad.t().is_contiguous():  # gate-major (the CPU LSTM backward's dgx): dW on oneDNN as it lies
            if ctx.needs_input_grad[1]:
                dw = sum_over_rows(grad, x)
            if ctx.needs_input_grad[0] and (K < GATHER_MIN_K or not _usable(grad, rows, K, N, w)):
                dx = grad @ w  # MKL reads it transposed
        else:
            grad = grad.contiguous()
            if ctx.needs_input_grad[1]:
                dw = grad.t() @ x
        if ctx.needs_input_grad[0] and dx is None:  # dense (for a wide dx a transposed copy costs less)
            if _usable(grad, rows, K, N, w):
                linear, reorder = _linear_op()
                dx = linear(grad.contiguous(), reorder(w.t().contiguous(), rows), None, "none", [], "")
            else:
                dx = grad @ w
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.sum(0)
        return dx, dw, db


# the input gradient of a gate-major output gradient: from this many input features up, a
# transposed copy of the gradient and oneDNN beat MKL reading it transposed (one thread: K 256
# 11.4 vs 18.2 ms, K 512 83 vs 124 ms; K 128 66 vs 51 ms)
GATHER_MIN_K = 256


def sum_over_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``aᵀ @ b`` for a [R, M], b [R, N] (a sum over the rows: the weight gradients). On oneDNN
    where aᵀ is dense as it lies (a gate-major gradient) and the product is large: about 2x MKL's
    speed (one thread: [1024, 3584] @ [3584, 256] 9.2 vs 18.5 ms, b's transposed copy included)."""
    R, M = a.shape
    at = a.t()
    if not (at.is_contiguous() and _usable(a, M, b.shape[1], R, b)):
        return at @ b
    linear, reorder = _linear_op()
    return linear(at, reorder(b.t().contiguous(), M), None, "none", [], "")


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, w, b)` (x [..., K], w [N, K]): for large fp32 CPU products in eager mode its product
    and its input gradient on oneDNN where that is used, else an output of `kernels.cpu._memory`'s pool
    (a pixel-MNIST LSTM's [T·B, 4H] of 205 MB: 107 ms in F.linear, 31 ms into a recycled buffer, one
    thread of an Intel Xeon); `F.linear` itself everywhere else."""
    rows = x.numel() // max(1, x.shape[-1])
    if rows == 0 or not (_usable(x, rows, *w.shape, w, b) or _pooled(x, rows, w.shape[0], w, b)):
        return F.linear(x, w, b)
    out = _Linear.apply(x.reshape(rows, x.shape[-1]), w, b)
    return out.view(*x.shape[:-1], w.shape[0])
