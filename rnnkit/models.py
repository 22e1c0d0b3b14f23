"""A recurrent layer with a linear head: the model of the synthetic tasks and the diagnostics."""

from __future__ import annotations

import torch
from torch import nn

from rnnkit._checks import check_probability
from rnnkit.modules import GRU, LSTM, RNN

CELLS = ("rnn", "lstm", "gru")


def make_layer(
    cell: str, input_size: int, hidden_size: int, cell_zoneout: float = 0.0, **kwargs
) -> nn.RNNBase:
    """An rnnkit layer by name: "rnn" (tanh), "rnn_relu", "lstm" or "gru"; ``cell_zoneout`` (the LSTM's
    zoneout of its cell state) only for "lstm"."""
    if cell_zoneout and cell != "lstm":
        raise ValueError(f"cell_zoneout: only the LSTM has a cell state to zone out, got cell {cell!r}")
    if cell == "lstm":
        kwargs["cell_zoneout"] = cell_zoneout
    if cell == "rnn_relu":
        return RNN(input_size, hidden_size, nonlinearity="relu", **kwargs)
    layers = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
    if cell not in layers:
        raise ValueError(f"cell: expected one of rnn, rnn_relu, lstm, gru, got {cell!r}")
    return layers[cell](input_size, hidden_size, **kwargs)


class SequenceModel(nn.Module):
    """rnnkit recurrent layer(s) and a linear head applied at every step.

    Args:
        cell: "rnn", "rnn_relu", "lstm" or "gru".
        input_size, hidden_size, output_size: sizes; num_layers, bidirectional, backend: as the
            layer's; dropout: the layer's, between layers (training only); weight_drop: the
            layer's DropConnect on its recurrent weights (training only); cell_zoneout: the LSTM's
            zoneout of its cell state (`rnnkit.zoneout`).

    Example:
        >>> model = SequenceModel("lstm", 2, 128, 1)
        >>> model(torch.randn(100, 32, 2)).shape      # [T, B, output_size]
        torch.Size([100, 32, 1])
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        output_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        backend: str = "auto",
        dropout: float = 0.0,
        weight_drop: float = 0.0,
        cell_zoneout: float = 0.0,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.recurrent = make_layer(
            cell, input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
            backend=backend, dropout=dropout if num_layers > 1 else 0.0, weight_drop=weight_drop,
            cell_zoneout=cell_zoneout,
        )  # fmt: skip
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), output_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, B, I] -> predictions [T, B, output_size] at every step."""
        output, _ = self.recurrent(x, lengths=lengths)
        return self.head(output)


class SequenceClassifier(nn.Module):
    """rnnkit recurrent layer(s) and a linear head on the last layer's final state.

    The final state h_n is each sequence's state at its own last step (with ``lengths``), and for a
    bidirectional layer the reverse direction's state after reading the whole sequence; both
    directions are concatenated.

    With ``pool="max"`` or ``"mean"`` the head reads the last layer's outputs pooled over each
    sequence's own steps (padding excluded) instead of the final state.

    Args:
        cell: "rnn", "rnn_relu", "lstm" or "gru".
        input_size, hidden_size, num_classes: sizes; num_layers, bidirectional, backend: as the
            layer's.
        vocab_size: when given, inputs are token ids [T, B] and an embedding (index 0: padding)
            of width ``input_size`` comes first.
        dropout: the probability of zeroing a feature (training only) on the embedding's output,
            between layers (the layer's own ``dropout``) and before the head.
        weight_drop: the probability of zeroing each recurrent weight (training only; one mask per
            batch, the layer's own ``weight_drop``).
        cell_zoneout: the LSTM's probability of a unit keeping its cell state at a step (training;
            the expectation at inference; `rnnkit.zoneout`).
        pool: what the head reads: "last" (the final state), "max" or "mean" over the steps.

    Example:
        >>> model = SequenceClassifier("lstm", 28, 256, 10, num_layers=2)   # row-wise MNIST
        >>> model(torch.rand(28, 64, 28)).shape                            # rows as steps
        torch.Size([64, 10])
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_classes: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        backend: str = "auto",
        vocab_size: int | None = None,
        dropout: float = 0.0,
        weight_drop: float = 0.0,
        cell_zoneout: float = 0.0,
        pool: str = "last",
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool: expected one of {', '.join(POOLS)}, got {pool!r}")
        self.cell, self.pool = cell, pool
        self.embedding = None if vocab_size is None else nn.Embedding(vocab_size, input_size, padding_idx=0)
        self.dropout = nn.Dropout(check_probability("dropout", dropout))
        self.recurrent = make_layer(
            cell, input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
            backend=backend, dropout=dropout if num_layers > 1 else 0.0, weight_drop=weight_drop,
            cell_zoneout=cell_zoneout,
        )  # fmt: skip
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, B, I] (token ids [T, B] with an embedding) -> logits [B, num_classes]."""
        if self.embedding is not None:
            x = self.dropout(self.embedding(x))
        output, state = self.recurrent(x, lengths=lengths)
        if self.pool == "last":
            h_n = state[0] if isinstance(state, tuple) else state  # [num_layers * D, B, H]
            D = 2 if self.recurrent.bidirectional else 1
            features = h_n[-D:].permute(1, 0, 2).reshape(h_n.shape[1], -1)  # [B, D * H]
        else:
            features = _pool(output, lengths, self.pool)
        return self.head(self.dropout(features))


POOLS = ("last", "max", "mean")


def _pool(output: torch.Tensor, lengths: torch.Tensor | None, how: str) -> torch.Tensor:
    # output [T, B, F] -> [B, F], over each sequence's first lengths[b] steps
    if lengths is None:
        return output.amax(0) if how == "max" else output.mean(0)
    steps = torch.arange(output.shape[0], device=output.device)[:, None]
    valid = (steps < lengths.to(output.device)[None, :])[..., None]  # [T, B, 1]
    if how == "max":
        return output.masked_fill(~valid, float("-inf")).amax(0)
    return (output * valid).sum(0) / lengths.to(output.device, output.dtype)[:, None]
