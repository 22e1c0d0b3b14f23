"""GRU forward and BPTT backward on the Triton kernels (gate order r, z, n as torch.nn): the
launchers, with `kernels.reference`'s signatures and return values. The kernels (design A in
`kernels/tiled.py`, design B in `kernels/split.py`) serve every cell; `_config.launch_config` picks
one per shape.
"""

from __future__ import annotations

import torch

from kernels._config import check_inputs, launch_config
from kernels.reference import GRUBackward, GRUForward
from kernels.split import split_backward, split_forward
from kernels.tiled import tiled_backward, tiled_forward


def gru_fwd(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    b_hn: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    *,
    training: bool = True,
    precision: str = "ieee",
) -> GRUForward:
    """The Triton twin of `kernels.reference.gru_fwd`: same arguments, same return values."""
    check_inputs("gru_fwd", gx=gx, w_hh=w_hh, b_hn=b_hn, h0=h0, lengths=lengths)
    _, B, D, G = gx.shape
    H = G // 3
    cfg = launch_config(B, H, H, 3, gx, precision, D=D)
    states = dict(h0=h0, b_hn=b_hn, lengths=lengths, training=training)
    if cfg.path == "split":
        y, h_n, _, gates, ghn = split_forward("gru", cfg, gx, w_hh, **states)
    else:
        y, h_n, _, gates, ghn = tiled_forward("gru", cfg, gx, w_hh, **states)
    return GRUForward(y, h_n, gates, ghn)


def gru_bwd(
    dy: torch.Tensor | None,
    dh_n: torch.Tensor | None,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None,
    y: torch.Tensor,
    gates: torch.Tensor,
    ghn: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    record: bool = False,
    precision: str = "ieee",
) -> GRUBackward:
    """The Triton twin of `kernels.reference.gru_bwd`: same arguments, same return values."""
    check_inputs("gru_bwd", dy=dy, dh_n=dh_n, w_hh=w_hh, h0=h0, y=y, gates=gates, ghn=ghn, lengths=lengths)
    _, B, D, G = gates.shape
    H = G // 3
    cfg = launch_config(B, H, H, 3, gates, precision, D=D, backward=True)
    saved = dict(y=y, h0=h0, gates=gates, aux=ghn, lengths=lengths, record=record)
    if cfg.path == "split":
        dgx, dghn, dh0, _, dh_steps, _ = split_backward("gru", cfg, dy, dh_n, w_hh, **saved)
    else:
        dgx, dghn, dh0, _, dh_steps, _ = tiled_backward("gru", cfg, dy, dh_n, w_hh, **saved)
    return GRUBackward(dgx, dghn, dh0, dh_steps)
