"""A recurrent layer with a linear head: the model of the synthetic tasks and the diagnostics."""

from __future__ import annotations

import torch
from torch import nn

from rnnkit.modules import GRU, LSTM, RNN

CELLS = ("rnn", "lstm", "gru")


def make_layer(cell: str, input_size: int, hidden_size: int, **kwargs) -> nn.RNNBase:
    """An rnnkit layer by name: "rnn" (tanh), "rnn_relu", "lstm" or "gru"."""
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
            layer's.

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
    ) -> None:
        super().__init__()
        self.cell = cell
        self.recurrent = make_layer(
            cell, input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional, backend=backend
        )
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

    Args:
        cell: "rnn", "rnn_relu", "lstm" or "gru".
        input_size, hidden_size, num_classes: sizes; num_layers, bidirectional, backend: as the
            layer's.
        vocab_size: when given, inputs are token ids [T, B] and an embedding (index 0: padding)
            of width ``input_size`` comes first.

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
    ) -> None:
        super().__init__()
        self.cell = cell
        self.embedding = None if vocab_size is None else nn.Embedding(vocab_size, input_size, padding_idx=0)
        self.recurrent = make_layer(
            cell, input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional, backend=backend
        )
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, B, I] (token ids [T, B] with an embedding) -> logits [B, num_classes]."""
        if self.embedding is not None:
            x = self.embedding(x)
        _, state = self.recurrent(x, lengths=lengths)
        h_n = state[0] if isinstance(state, tuple) else state  # [num_layers * D, B, H]
        D = 2 if self.recurrent.bidirectional else 1
        last = h_n[-D:].permute(1, 0, 2).reshape(h_n.shape[1], -1)  # [B, D * H]
        return self.head(last)
