"""Bad input raises a clear error that names the argument, the expected and the actual value."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import functional


@pytest.fixture
def lstm():
    return rnnkit.LSTM(28, 16, num_layers=2)


CASES = [
    # (what, call, exception, message pattern)
    (
        "rank 1 input",
        lambda m: m(torch.randn(28)),
        ValueError,
        r"input: expected rank 3 \[T, B, I\].*got shape \[28\]",
    ),
    (
        "rank 4 input",
        lambda m: m(torch.randn(2, 3, 4, 28)),
        ValueError,
        r"input: expected rank 3.*\[2, 3, 4, 28\]",
    ),
    (
        "feature size",
        lambda m: m(torch.randn(5, 2, 27)),
        ValueError,
        r"input: expected 28 features.*\[5, 2, 27\]",
    ),
    (
        "integer input",
        lambda m: m(torch.ones(5, 2, 28, dtype=torch.long)),
        TypeError,
        r"input: expected a floating",
    ),
    (
        "dtype mismatch",
        lambda m: m(torch.randn(5, 2, 28, dtype=torch.float64)),
        TypeError,
        r"input: expected dtype torch.float32.*got torch.float64",
    ),
    ("not a tensor", lambda m: m([[1.0]]), TypeError, r"input: expected a torch.Tensor.*got list"),
    (
        "empty sequence",
        lambda m: m(torch.randn(0, 2, 28)),
        ValueError,
        r"input: the sequence is empty \(T = 0\)",
    ),
    (
        "hx not a tuple",
        lambda m: m(torch.randn(5, 2, 28), torch.zeros(2, 2, 16)),
        TypeError,
        r"hx: expected a tuple \(h_0, c_0\)",
    ),
    (
        "h_0 shape",
        lambda m: m(torch.randn(5, 2, 28), (torch.zeros(1, 2, 16), torch.zeros(2, 2, 16))),
        ValueError,
        r"h_0: expected shape \[num_layers\*num_directions, B, H\] = \[2, 2, 16\], got \[1, 2, 16\]",
    ),
    (
        "c_0 batch",
        lambda m: m(torch.randn(5, 2, 28), (torch.zeros(2, 2, 16), torch.zeros(2, 3, 16))),
        ValueError,
        r"c_0: expected shape .* = \[2, 2, 16\], got \[2, 3, 16\]",
    ),
    (
        "h_0 dtype",
        lambda m: m(torch.randn(5, 2, 28), (torch.zeros(2, 2, 16, dtype=torch.float64),) * 2),
        TypeError,
        r"h_0: expected dtype torch.float32.*got torch.float64",
    ),
    (
        "batched hx for unbatched input",
        lambda m: m(torch.randn(5, 28), (torch.zeros(2, 1, 16),) * 2),
        ValueError,
        r"h_0: expected shape \[num_layers\*num_directions, H\] = \[2, 16\], got \[2, 1, 16\]",
    ),
    (
        "lengths too long",
        lambda m: m(torch.randn(5, 2, 28), lengths=torch.tensor([6, 3])),
        ValueError,
        r"lengths: every length must be at most the number of steps T = 5, got 6",
    ),
    (
        "zero length",
        lambda m: m(torch.randn(5, 2, 28), lengths=torch.tensor([0, 3])),
        ValueError,
        r"lengths: every length must be at least 1, got a length of 0",
    ),
    (
        "lengths count",
        lambda m: m(torch.randn(5, 2, 28), lengths=torch.tensor([5, 3, 1])),
        ValueError,
        r"lengths: expected shape \[B\] = \[2\].*got \[3\]",
    ),
    (
        "float lengths",
        lambda m: m(torch.randn(5, 2, 28), lengths=torch.tensor([5.0, 3.0])),
        TypeError,
        r"lengths: expected an integer tensor, got dtype torch.float32",
    ),
]


@pytest.mark.parametrize(("what", "call", "exc", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_layer_rejects(lstm, what, call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(lstm)


def test_batch_first_legend_in_message():
    gru = rnnkit.GRU(4, 3, batch_first=True)
    with pytest.raises(ValueError, match=r"expected rank 3 \[B, T, I\]"):
        gru(torch.randn(4))


def test_packed_sequence_with_lengths_rejected(lstm):
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 28), [5, 3])
    with pytest.raises(ValueError, match="lengths: a PackedSequence carries its own lengths"):
        lstm(packed, lengths=[5, 3])


def test_cell_rejects():
    cell = rnnkit.LSTMCell(4, 3)
    with pytest.raises(ValueError, match=r"input: expected 4 features.*\[2, 5\]"):
        cell(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"h_0: expected shape \[B, H\] = \[2, 3\], got \[2, 4\]"):
        cell(torch.randn(2, 4), (torch.zeros(2, 4), torch.zeros(2, 3)))
    with pytest.raises(ValueError, match=r"hx: expected shape \[H\] = \[3\], got \[1, 3\]"):
        rnnkit.RNNCell(4, 3)(torch.randn(4), torch.zeros(1, 3))


def test_functional_rejects():
    gx = torch.randn(5, 2, 1, 8)
    with pytest.raises(ValueError, match=r"gx: expected rank 4 \[T, B, D, 4\*H\], got shape \[5, 2, 8\]"):
        functional.lstm(gx[:, :, 0], torch.randn(1, 8, 2))
    with pytest.raises(ValueError, match=r"gx: the last dimension must be 4\*H for the LSTM, got 7"):
        functional.lstm(torch.randn(5, 2, 1, 7), torch.randn(1, 7, 2))
    with pytest.raises(ValueError, match=r"gx: expected D = 1 or 2 directions.*got 3"):
        functional.lstm(torch.randn(5, 2, 3, 8), torch.randn(3, 8, 2))
    with pytest.raises(
        ValueError, match=r"w_hh: expected shape \[D, G\*H, P\] = \[1, 8, 2\], got \[1, 8, 3\]"
    ):
        functional.lstm(gx, torch.randn(1, 8, 3))
    with pytest.raises(ValueError, match=r"c0: expected shape \[D, B, H\] = \[1, 2, 2\], got \[1, 2, 3\]"):
        functional.lstm(gx, torch.randn(1, 8, 2), None, torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match=r"nonlinearity: expected 'tanh' or 'relu', got 'sigmoid'"):
        functional.rnn(torch.randn(5, 2, 1, 2), torch.randn(1, 2, 2), nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"b_hn: expected shape \[D, H\] = \[1, 2\], got \[2\]"):
        functional.gru(torch.randn(5, 2, 1, 6), torch.randn(1, 6, 2), torch.zeros(2))
    with pytest.raises(TypeError, match=r"w_hh: expected dtype torch.float32.*got torch.float64"):
        functional.gru(torch.randn(5, 2, 1, 6), torch.randn(1, 6, 2, dtype=torch.float64))


def test_device_mismatch_is_named():
    meta = torch.empty(5, 2, 1, 8, device="meta")
    with pytest.raises(ValueError, match=r"w_hh: expected a tensor on meta.*got one on cpu"):
        functional.lstm(meta, torch.randn(1, 8, 2))
