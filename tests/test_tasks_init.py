"""Synthetic tasks and initialisation schemes."""

from __future__ import annotations

import math

import pytest
import torch

import rnnkit
from rnnkit.init import initialize
from rnnkit.models import SequenceModel
from rnnkit.synthetic import get_task


def test_adding_task_target_is_the_marked_sum():
    batch = get_task("adding").sample(6, 20, torch.Generator().manual_seed(1))
    assert batch.x.shape == (20, 6, 2) and batch.target.shape == (1, 6, 1)
    marks = batch.x[..., 1]
    assert torch.all(marks.sum(0) == 2)
    assert torch.all(marks[:10].sum(0) == 1), "one mark in each half"
    assert torch.allclose(batch.target[0, :, 0], (batch.x[..., 0] * marks).sum(0))
    assert get_task("adding").baseline(20) == pytest.approx(1 / 6)


def test_copy_task_layout_and_baseline():
    task = get_task("copy")
    batch = task.sample(3, 30, torch.Generator().manual_seed(2))
    T = 30 + 20
    assert batch.x.shape == (T, 3, 10) and batch.target.shape == (T, 3)
    tokens = batch.x.argmax(-1)
    assert torch.equal(batch.target[-10:], tokens[:10]), "the last 10 targets recall the first 10 symbols"
    assert torch.all(tokens[10:39] == 8) and torch.all(tokens[39] == 9) and torch.all(tokens[40:] == 8)
    assert torch.all(batch.target[:-10] == 8)
    assert task.baseline(30) == pytest.approx(10 * math.log(8) / T)


def test_unknown_task_and_bad_sizes():
    with pytest.raises(ValueError, match="task: expected one of random, adding, copy, got 'parity'"):
        get_task("parity")
    with pytest.raises(ValueError, match="batch and seq_len: expected at least 1"):
        get_task("random").sample(0, 5)


def test_orthogonal_and_identity_blocks():
    lstm = initialize(rnnkit.LSTM(3, 6, bidirectional=True), "orthogonal")
    for w in (lstm.weight_hh_l0, lstm.weight_hh_l0_reverse):
        for g in range(4):
            block = w[g * 6 : (g + 1) * 6].detach()
            assert torch.allclose(block @ block.T, torch.eye(6), atol=1e-5)
    assert torch.all(lstm.bias_ih_l0 == 0)
    rnn = initialize(rnnkit.RNN(3, 5, nonlinearity="relu"), "identity")
    assert torch.equal(rnn.weight_hh_l0.detach(), torch.eye(5))
    with pytest.raises(ValueError, match="'identity' needs square gate blocks"):
        initialize(rnnkit.LSTM(3, 6, proj_size=2), "identity")


def test_chrono_biases():
    T = 100
    lstm = initialize(rnnkit.LSTM(3, 64), "chrono", seq_len=T)
    forget = (lstm.bias_ih_l0 + lstm.bias_hh_l0)[64:128].detach()
    assert forget.min() >= 0 and forget.max() <= math.log(T - 1)
    assert torch.allclose((lstm.bias_ih_l0 + lstm.bias_hh_l0)[:64], -forget)
    gru = initialize(rnnkit.GRU(3, 8), "chrono", seq_len=T)
    update = (gru.bias_ih_l0 + gru.bias_hh_l0)[8:16]
    assert update.min() >= 0
    with pytest.raises(ValueError, match="'chrono' needs a gated cell"):
        initialize(rnnkit.RNN(3, 4), "chrono", seq_len=T)
    with pytest.raises(ValueError, match="seq_len: 'chrono' needs the longest dependency T >= 2, got None"):
        initialize(rnnkit.LSTM(3, 4), "chrono")


def test_sequence_model_shapes():
    model = SequenceModel("gru", 2, 8, 3, num_layers=2, bidirectional=True)
    assert model(torch.randn(7, 4, 2)).shape == (7, 4, 3)
    with pytest.raises(ValueError, match="cell: expected one of rnn, rnn_relu, lstm, gru, got 'tcn'"):
        SequenceModel("tcn", 2, 8, 3)


def test_text_pipeline():
    from rnnkit.text import PAD, UNK, build_vocab, encode, tokenize

    assert tokenize("A <br />Great, GREAT film!") == ["a", "great", "great", "film"]
    vocab = build_vocab([["b", "a", "a"], ["c", "a", "b"]], max_size=2, min_freq=2)
    assert vocab == {"a": 2, "b": 3}  # most frequent first; "c" is too rare
    ids, lengths = encode([["a", "b", "c", "a"], ["b"], []], vocab, max_len=3)
    assert ids.tolist() == [[3, UNK, 2], [3, PAD, PAD], [UNK, PAD, PAD]]  # the last 3 tokens kept
    assert lengths.tolist() == [3, 1, 1]
