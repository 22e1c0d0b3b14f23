"""torch's own fused recurrence (ATen or oneDNN: what torch.nn runs) where rnnkit's would compute the
same numbers slower: a whole layer stack's inference (keeps nothing, records nothing), and a cell's
step (autograd included: no custom operator's dispatch per step). Eager, on the CPU, float32 or
float64 throughout, no autocast."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from kernels.cpu._config import eager_cpu

# torch's fused recurrence of each mode (torch.nn's names), looked up once
_FUSED = {
    "LSTM": torch._VF.lstm,
    "GRU": torch._VF.gru,
    "RNN_TANH": torch._VF.rnn_tanh,
    "RNN_RELU": torch._VF.rnn_relu,
}


# torch's cell of each mode
_CELLS = {
    "LSTM": torch._VF.lstm_cell,
    "GRU": torch._VF.gru_cell,
    "RNN_TANH": torch._VF.rnn_tanh_cell,
    "RNN_RELU": torch._VF.rnn_relu_cell,
}


def _same_dtype_eager(x: torch.Tensor, tensors: list[torch.Tensor | None]) -> bool:
    return (
        x.dtype in (torch.float32, torch.float64)
        and eager_cpu(x, *tensors, dtype=x.dtype)
        and not torch.is_autocast_enabled("cpu")
    )


def takes(x: torch.Tensor, tensors: list[torch.Tensor | None]) -> bool:
    """Whether `layer_stack` runs a call on input x with these weights and states."""
    if not _same_dtype_eager(x, tensors):
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *tensors)))


def cell_step(
    mode: str, x: torch.Tensor, weights: list[torch.Tensor | None], states: list[torch.Tensor]
) -> tuple[torch.Tensor, ...] | None:
    """One step of torch's cell: x [B, I], weights (w_ih, w_hh, b_ih, b_hh), states [] or [h] (LSTM:
    [h, c]), [B, H] each. Returns (h',) or (h', c'), or None where the call is not eager fp32/fp64
    CPU work of one dtype."""
    if not _same_dtype_eager(x, [*weights, *states]):
        return None
    B, H = x.shape[0], weights[1].shape[1]
    h = states[0] if states else x.new_zeros(B, H)
    if mode == "LSTM":
        return tuple(_CELLS[mode](x, (h, states[1] if states else x.new_zeros(B, H)), *weights))
    return (_CELLS[mode](x, h, *weights),)


def layer_stack(
    mode: str,
    x: torch.Tensor,
    weights: list[torch.Tensor],
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    lengths: torch.Tensor | None,
    *,
    bias: bool,
    num_layers: int,
    bidirectional: bool,
    width: int,
    hidden: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """Every layer of a stack at inference, or None where `takes` refuses the call.

    Args:
        mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU". x: [T, B, I] time-major.
        weights: the module's ``_flat_weights``. h0 [L*D, B, P], c0 [L*D, B, H] or None.
        lengths: [B] or None. width: P (proj_size or hidden). hidden: H.

    Returns:
        (output [T, B, D*P], h_n [L*D, B, P], c_n [L*D, B, H] or None), or None.
    """
    if not takes(x, [*weights, h0, c0]):
        return None
    T, B, _ = x.shape
    rows = num_layers * (2 if bidirectional else 1)
    h = x.new_zeros(rows, B, width) if h0 is None else h0
    hx = (h, x.new_zeros(rows, B, hidden) if c0 is None else c0) if mode == "LSTM" else h
    fn = _FUSED[mode]
    settings = (weights, bias, num_layers, 0.0, False, bidirectional)
    if lengths is None:
        out = fn(x, hx, *settings, False)
        return out[0], out[1], out[2] if mode == "LSTM" else None
    # variable lengths: torch's packed form, in its order (sorted by length) and back
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    order, back = packed.sorted_indices, packed.unsorted_indices
    hx = tuple(t.index_select(1, order) for t in hx) if mode == "LSTM" else hx.index_select(1, order)
    out = fn(packed.data, packed.batch_sizes, hx, *settings)
    output = pad_packed_sequence(PackedSequence(out[0], packed.batch_sizes, order, back), total_length=T)[0]
    c_n = out[2].index_select(1, back) if mode == "LSTM" else None
    return output, out[1].index_select(1, back), c_n
