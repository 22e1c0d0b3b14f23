"""LSTM forward and BPTT backward on the Triton kernels (gate order i, f, g, o as torch.nn; an optional
projection W_hr): the launchers, with `kernels.reference`'s signatures and return values. The
kernels (design A in `kernels/tiled.py`, design B in `kernels/split.py`) serve every cell;
`_config.launch_config` picks one per shape.
"""

from __future__ import annotations

import torch

from kernels._config import check_inputs, launch_config
from kernels.reference import LSTMBackward, LSTMForward
from kernels.split import split_backward, split_forward
from kernels.tiled import tiled_backward, tiled_forward


def lstm_fwd(
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    w_hr: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    *,
    training: bool = True,
    zoneout: float = 0.0,
    precision: str = "ieee",
) -> LSTMForward:
    """The Triton twin of `kernels.reference.lstm_fwd`: same arguments, same return values."""
    check_inputs("lstm_fwd", gx=gx, w_hh=w_hh, h0=h0, c0=c0, w_hr=w_hr, lengths=lengths)
    _, B, D, G = gx.shape
    H, P = G // 4, w_hh.shape[2]
    cfg = launch_config(B, H, P, 4, gx, precision, D=D)
    states = dict(h0=h0, c0=c0, w_hr=w_hr, lengths=lengths, training=training, zoneout=zoneout)
    if cfg.path == "split":
        return LSTMForward(*split_forward("lstm", cfg, gx, w_hh, **states))
    return LSTMForward(*tiled_forward("lstm", cfg, gx, w_hh, **states))


def lstm_bwd(
    dy: torch.Tensor | None,
    dh_n: torch.Tensor | None,
    dc_n: torch.Tensor | None,
    w_hh: torch.Tensor,
    w_hr: torch.Tensor | None,
    c0: torch.Tensor | None,
    gates: torch.Tensor,
    c_steps: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    record: bool = False,
    zoneout: float = 0.0,
    precision: str = "ieee",
) -> LSTMBackward:
    """The Triton twin of `kernels.reference.lstm_bwd`: same arguments, same return values."""
    check_inputs("lstm_bwd", dy=dy, dh_n=dh_n, dc_n=dc_n, w_hh=w_hh, w_hr=w_hr, c0=c0, gates=gates,
                 c_steps=c_steps, lengths=lengths)  # fmt: skip
    _, B, D, G = gates.shape
    H, P = G // 4, w_hh.shape[2]
    cfg = launch_config(B, H, P, 4, gates, precision, D=D, backward=True)
    saved = dict(dc_n=dc_n, w_hr=w_hr, c0=c0, gates=gates, aux=c_steps, lengths=lengths, record=record)
    saved["zoneout"] = zoneout
    if cfg.path == "split":
        dgx, _, dh0, dc0, dh_steps, dc_steps = split_backward("lstm", cfg, dy, dh_n, w_hh, **saved)
    else:
        dgx, _, dh0, dc0, dh_steps, dc_steps = tiled_backward("lstm", cfg, dy, dh_n, w_hh, **saved)
    return LSTMBackward(dgx, dh0, dc0, dh_steps, dc_steps)
