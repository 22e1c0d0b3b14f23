"""Elman RNN (tanh or relu) forward and BPTT backward on the Triton kernels: the launchers, with
`kernels.reference`'s signatures and return values. The kernels (design A in `kernels/tiled.py`,
design B in `kernels/split.py`) serve every cell; `_config.launch_config` picks one per shape.
"""

from __future__ import annotations

import torch

from kernels._config import check_inputs, launch_config
from kernels.reference import RNNBackward, RNNForward
from kernels.split import split_backward, split_forward
from kernels.tiled import tiled_backward, tiled_forward


def rnn_fwd(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    *,
    nonlinearity: str = "tanh",
    training: bool = True,
    precision: str = "ieee",
) -> RNNForward:
    """The Triton twin of `kernels.reference.rnn_fwd`: same arguments, same return values."""
    check_inputs("rnn_fwd", nonlinearity, gx=gx, w_hh=w_hh, h0=h0, lengths=lengths)
    _, B, D, H = gx.shape
    cfg = launch_config(B, H, H, 1, gx, precision, D=D)
    cell = f"rnn_{nonlinearity}"
    if cfg.path == "split":
        y, h_n, *_ = split_forward(cell, cfg, gx, w_hh, h0=h0, lengths=lengths, training=training)
    else:
        y, h_n, *_ = tiled_forward(cell, cfg, gx, w_hh, h0=h0, lengths=lengths, training=training)
    return RNNForward(y, h_n)


def rnn_bwd(
    dy: torch.Tensor | None,
    dh_n: torch.Tensor | None,
    y: torch.Tensor,
    w_hh: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    nonlinearity: str = "tanh",
    record: bool = False,
    precision: str = "ieee",
) -> RNNBackward:
    """The Triton twin of `kernels.reference.rnn_bwd`: same arguments, same return values."""
    check_inputs("rnn_bwd", nonlinearity, dy=dy, dh_n=dh_n, y=y, w_hh=w_hh, lengths=lengths)
    _, B, D, H = y.shape
    cfg = launch_config(B, H, H, 1, y, precision, D=D, backward=True)
    cell = f"rnn_{nonlinearity}"
    if cfg.path == "split":
        dgx, _, dh0, _, dh_steps, _ = split_backward(
            cell, cfg, dy, dh_n, w_hh, y=y, lengths=lengths, record=record
        )
    else:
        dgx, _, dh0, _, dh_steps, _ = tiled_backward(
            cell, cfg, dy, dh_n, w_hh, y=y, lengths=lengths, record=record
        )
    return RNNBackward(dgx, dh0, dh_steps)
