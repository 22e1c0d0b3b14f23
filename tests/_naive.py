"""A recurrent layer as a Python loop over torch.nn cells: every step's state is a tensor of its
own (``retain_grad``), so autograd gives dL/dh_t and dL/dc_t to check the recorded ones against."""

from __future__ import annotations

import torch
from torch import nn


def naive_layer(module: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor, layer: int = 0):
    """One bidirectional layer as a loop over torch.nn cells, keeping every step's state."""
    T, B, _ = x.shape
    cell_cls = {"LSTM": nn.LSTMCell, "GRU": nn.GRUCell, "RNN_TANH": nn.RNNCell}[module.mode]
    outputs, finals, steps = [], [], []
    for suffix in ("", "_reverse"):
        cell = cell_cls(x.shape[-1], module.hidden_size, dtype=x.dtype)
        cell.load_state_dict({k: getattr(module, f"{k}_l{layer}{suffix}") for k in cell.state_dict()})
        h = x.new_zeros(B, module.hidden_size)
        c = x.new_zeros(B, module.hidden_size)
        out = [None] * T
        h_steps, c_steps = [None] * T, [None] * T
        for t in reversed(range(T)) if suffix else range(T):
            valid = (t < lengths)[:, None]
            if module.mode == "LSTM":
                h_new, c_new = cell(x[t], (h, c))
                c_new.retain_grad()
                c_steps[t] = c_new
                c = torch.where(valid, c_new, c)
            else:
                h_new = cell(x[t], h)
            h_new.retain_grad()
            h_steps[t] = h_new
            out[t] = torch.where(valid, h_new, 0.0)
            h = torch.where(valid, h_new, h)
        outputs.append(torch.stack(out))
        finals.append((h, c))
        steps.append((h_steps, c_steps))
    return torch.cat(outputs, dim=-1), finals, steps


def naive_stack(module: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor):
    """Every layer of a (bidirectional) stack, no dropout: (output, [per layer: steps per direction])."""
    steps = []
    for layer in range(module.num_layers):
        x, _, layer_steps = naive_layer(module, x, lengths, layer)
        steps.append(layer_steps)
    return x, steps
