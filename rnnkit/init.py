"""Initialisation schemes for the recurrent layers, applied in place.

- ``default``: torch.nn's, every weight and bias U(-1/√H, 1/√H).
- ``orthogonal``: each gate's block of W_hh an orthogonal matrix (Saxe et al. 2014); biases zero.
- ``identity``: each gate's block of W_hh the identity, biases zero (IRNN, Le et al. 2015, for
  the Elman RNN; the same recipe applied to every gate block of LSTM and GRU).
- ``chrono``: gated cells only (Tallec & Ollivier 2018): LSTM forget bias log U[1, T-1] and input
  bias its negative; GRU update-gate bias log U[1, T-1] (z keeps the old state, like f).
  The other weights keep torch.nn's default. Needs the longest dependency T (``seq_len``).
"""

from __future__ import annotations

import torch
from torch import nn

INITS = ("default", "orthogonal", "identity", "chrono")


def _directions(module: nn.RNNBase) -> tuple[str, ...]:
    return ("", "_reverse")[: 2 if module.bidirectional else 1]


def _gates(module: nn.RNNBase) -> int:
    return {"LSTM": 4, "GRU": 3}.get(module.mode, 1)


@torch.no_grad()
def initialize(module: nn.RNNBase, scheme: str, *, seq_len: int | None = None) -> nn.RNNBase:
    """Apply an initialisation scheme to a torch.nn or rnnkit RNN/LSTM/GRU, in place.

    Args:
        module: the layer (rnnkit or torch.nn: the parameter names are the same).
        scheme: one of "default", "orthogonal", "identity", "chrono".
        seq_len: the longest dependency to cover, needed by "chrono" (at least 2).

    Returns:
        The module.

    Example:
        >>> initialize(rnnkit.LSTM(1, 128), "chrono", seq_len=500)
    """
    if scheme not in INITS:
        raise ValueError(f"scheme: expected one of {', '.join(INITS)}, got {scheme!r}")
    module.reset_parameters()
    if scheme == "default":
        return module
    G, H = _gates(module), module.hidden_size
    if scheme == "chrono":
        if module.mode not in ("LSTM", "GRU"):
            raise ValueError(f"scheme: 'chrono' needs a gated cell (LSTM or GRU), got {module.mode}")
        if seq_len is None or seq_len < 2:
            raise ValueError(f"seq_len: 'chrono' needs the longest dependency T >= 2, got {seq_len}")
        if not module.bias:
            raise ValueError("scheme: 'chrono' sets gate biases, but the module has bias=False")
    for layer in range(module.num_layers):
        for suffix in _directions(module):
            w_hh = getattr(module, f"weight_hh_l{layer}{suffix}")
            if scheme in ("orthogonal", "identity"):
                if scheme == "identity" and w_hh.shape[1] != H:
                    raise ValueError(
                        f"scheme: 'identity' needs square gate blocks, got W_hh {list(w_hh.shape)}"
                    )
                for g in range(G):
                    block = w_hh[g * H : (g + 1) * H]
                    if scheme == "orthogonal":
                        nn.init.orthogonal_(block)
                    else:
                        block.copy_(torch.eye(H))
                if module.bias:
                    getattr(module, f"bias_ih_l{layer}{suffix}").zero_()
                    getattr(module, f"bias_hh_l{layer}{suffix}").zero_()
                continue
            b_ih = getattr(module, f"bias_ih_l{layer}{suffix}")
            b_hh = getattr(module, f"bias_hh_l{layer}{suffix}")
            timescale = torch.log(
                torch.empty(H, dtype=b_ih.dtype, device=b_ih.device).uniform_(1, seq_len - 1)
            )
            keep = slice(H, 2 * H)  # LSTM f; GRU z (gate order r, z, n)
            b_ih[keep] = timescale
            b_hh[keep] = 0
            if module.mode == "LSTM":
                b_ih[:H] = -timescale
                b_hh[:H] = 0
    return module
