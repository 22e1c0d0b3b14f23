"""For the same bad input rnnkit raises an exception that torch.nn's ``except`` clause catches, with
torch.nn's words in its message, so that code and tests written against torch.nn keep working."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit._checks import DtypeError, InputError

x = torch.randn(5, 3, 4)
pair = (torch.randn(1, 3, 6), torch.randn(1, 3, 6))
packed = pack_padded_sequence(x, [5, 3, 2])
c_short = (torch.randn(4, 9), torch.randn(4, 8))
DTYPE_WORDS = "RNN input dtype (torch.float64) does not match weight dtype (torch.float32)"

# (what, the call on a library L: torch.nn or rnnkit, torch's words found in rnnkit's message).
# None: torch's message comes from deep inside its kernels (a matmul's, an indexing's), not a check
CASES = [
    ("layer input dtype", lambda L: L.LSTM(4, 6)(x.double()), DTYPE_WORDS),
    ("layer input width", lambda L: L.LSTM(4, 6)(torch.randn(5, 3, 5)), None),
    ("layer input rank", lambda L: L.GRU(4, 6)(torch.randn(5, 3, 4, 1)), None),
    ("layer hx batch", lambda L: L.GRU(4, 6)(x, torch.randn(1, 2, 6)), None),
    ("layer hx width", lambda L: L.RNN(4, 6)(x, torch.randn(1, 3, 5)), None),
    ("layer hx layers", lambda L: L.GRU(4, 6, num_layers=2)(x, torch.randn(1, 3, 6)), None),
    ("lstm c_0 width", lambda L: L.LSTM(4, 6)(x, (pair[0], torch.randn(1, 3, 5))), None),
    ("lstm projected h_0", lambda L: L.LSTM(4, 6, proj_size=2)(x, pair), None),
    ("bidirectional hx", lambda L: L.LSTM(4, 6, bidirectional=True)(x, pair), None),
    ("unbatched input, batched hx", lambda L: L.GRU(4, 6)(torch.randn(5, 4), torch.randn(1, 3, 6)), None),
    ("layer hx dtype", lambda L: L.GRU(4, 6)(x, torch.randn(1, 3, 6).double()), False),
    ("packed input, hx batch", lambda L: L.LSTM(4, 6)(packed, (torch.randn(1, 2, 6),) * 2), False),
    ("nonlinearity", lambda L: L.RNN(4, 6, nonlinearity="garbage"), None),
    ("RNN proj_size", lambda L: L.RNN(4, 6, proj_size=2), None),
    ("GRU proj_size", lambda L: L.GRU(4, 6, proj_size=2), None),
    ("proj_size >= hidden_size", lambda L: L.LSTM(4, 6, proj_size=6), None),
    ("proj_size < 0", lambda L: L.LSTM(4, 6, proj_size=-1), None),
    ("dropout > 1", lambda L: L.LSTM(4, 6, dropout=1.5), None),
    ("hidden_size 0", lambda L: L.LSTM(4, 0), None),
    ("hidden_size float", lambda L: L.GRU(4, 6.0), None),
    ("num_layers 0", lambda L: L.LSTM(4, 6, num_layers=0), None),
    ("cell input width", lambda L: L.GRUCell(7, 9)(torch.randn(4, 6)), None),
    ("cell input rank", lambda L: L.LSTMCell(7, 9)(torch.randn(4, 7, 1)), None),
    ("cell hx of batch 1", lambda L: L.GRUCell(7, 9)(torch.randn(4, 7), torch.randn(1, 9)), None),
    ("cell hx width", lambda L: L.RNNCell(7, 9)(torch.randn(4, 7), torch.randn(4, 8)), None),
    ("lstm cell c_0 width", lambda L: L.LSTMCell(7, 9)(torch.randn(4, 7), c_short), None),
    ("cell hx rank", lambda L: L.RNNCell(7, 9)(torch.randn(4, 7), torch.randn(1, 4, 9)), None),
    ("cell input dtype", lambda L: L.RNNCell(7, 9)(torch.randn(4, 7).double()), False),
    ("cell nonlinearity", lambda L: L.RNNCell(7, 9, nonlinearity="garbage")(torch.randn(4, 7)), None),
]  # fmt: skip


def _raised(call, library):
    try:
        call(library)
    except Exception as err:
        return err
    raise AssertionError(f"{library.__name__} raised nothing")


@pytest.mark.parametrize("call, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rnnkit_raises_what_torch_nn_raises(call, words):
    theirs, ours = _raised(call, nn), _raised(call, rnnkit)
    assert isinstance(ours, type(theirs)), (
        f"torch.nn raises {type(theirs).__name__}, rnnkit {type(ours)}: {ours}"
    )
    if words is False:  # torch's words are its kernel's: only the type is kept
        return
    words = words or str(theirs)
    assert re.search(re.escape(words), str(ours)), f"torch.nn says {theirs!s}; rnnkit says {ours!s}"
    assert str(ours).split(":")[0] in ("input", "hx", "h_0", "c_0", "nonlinearity", "proj_size") or (
        str(ours) == str(theirs)  # torch.nn's own constructor checks, which rnnkit's layers inherit
    ), f"rnnkit's message names no argument: {ours}"


def test_rnnkits_errors_are_still_the_types_it_raised():
    """Code that caught rnnkit's own types keeps catching them: ValueError for shapes and settings,
    TypeError for dtypes."""
    assert issubclass(InputError, ValueError) and issubclass(InputError, RuntimeError)
    assert all(issubclass(DtypeError, t) for t in (TypeError, ValueError, RuntimeError))
    with pytest.raises(ValueError, match=r"hx: expected shape \[num_layers\*num_directions, B, H\]"):
        rnnkit.GRU(4, 6)(x, torch.randn(1, 2, 6))
    with pytest.raises(TypeError, match=r"input: expected dtype torch\.float32"):
        rnnkit.LSTMCell(7, 9)(torch.randn(4, 7).double())
    assert rnnkit.RNNCell(7, 9, nonlinearity="relu")(torch.randn(4, 7)).min() >= 0
