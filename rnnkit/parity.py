"""Compare rnnkit's layers with torch.nn's on the same weights and data: the install check."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import rnnkit
from rnnkit._checks import ArgumentError, check_at_least, check_where
from rnnkit.backends import backend_name


@dataclass(frozen=True)
class CheckResult:
    """How far one rnnkit layer is from its torch.nn twin.

    Attributes:
        layer: "RNN", "LSTM" or "GRU". backend: the backend that ran.
        output_error: largest relative error max|Δ| / max|torch.nn's| over the output and the
            final states.
        grad_error: the same over the gradients of the input and every parameter.
        worst_grad: the name of the gradient with the largest error.
    """

    layer: str
    backend: str
    output_error: float
    grad_error: float
    worst_grad: str


def _run(model: nn.Module, x: torch.Tensor, upstream_seed: int) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_()
    out, state = model(x)
    states = state if isinstance(state, tuple) else (state,)
    tensors = {"output": out, **{f"state{i}": s for i, s in enumerate(states)}}
    gen = torch.Generator().manual_seed(upstream_seed)
    loss = sum((t * torch.randn(t.shape, generator=gen).to(t)).sum() for t in tensors.values())
    loss.backward()
    grads = {"input": x.grad, **{n: p.grad for n, p in model.named_parameters()}}
    return {**{k: v.detach() for k, v in tensors.items()}, **{f"grad_{k}": v for k, v in grads.items()}}


def compare_with_torch(
    layers: tuple[str, ...] = ("RNN", "LSTM", "GRU"),
    *,
    seq_len: int = 50,
    batch: int = 8,
    input_size: int = 16,
    hidden_size: int = 32,
    num_layers: int = 2,
    bidirectional: bool = True,
    backend: str = "auto",
    device: str = "cpu",
    seed: int = 0,
) -> list[CheckResult]:
    """Run each rnnkit layer and its torch.nn twin (copied weights) forward and backward.

    Returns:
        One `CheckResult` per layer, relative errors measured in float32 on ``device``.

    Example:
        >>> [r.output_error < 1e-4 for r in compare_with_torch(seq_len=5)]
        [True, True, True]
    """
    for name in layers:
        if name not in ("RNN", "LSTM", "GRU"):
            raise ArgumentError("layers", f"expected names among RNN, LSTM, GRU, got {name!r}")
    check_at_least("seq_len", seq_len, 1)
    check_at_least("batch", batch, 1)
    check_at_least("hidden_size", hidden_size, 1)
    dev = check_where(device, backend)
    results = []
    for name in layers:
        torch.manual_seed(seed)
        kw = {"num_layers": num_layers, "bidirectional": bidirectional, "device": dev}
        theirs = getattr(nn, name)(input_size, hidden_size, **kw)
        ours = getattr(rnnkit, name)(input_size, hidden_size, backend=backend, **kw)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(seq_len, batch, input_size, device=dev)
        a, b = _run(ours, x, seed), _run(theirs, x, seed)
        errors = {k: ((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)).item() for k in b}
        grad_errors = {k: v for k, v in errors.items() if k.startswith("grad_")}
        worst = max(grad_errors, key=grad_errors.get)
        results.append(
            CheckResult(
                layer=name,
                backend=backend_name(backend, dev),
                output_error=max(v for k, v in errors.items() if not k.startswith("grad_")),
                grad_error=grad_errors[worst],
                worst_grad=worst.removeprefix("grad_"),
            )
        )
    return results
