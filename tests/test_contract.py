"""Every backend's six functions check every tensor's shape against the others, and its device,
before reading it (`kernels._contract`): a wrong one is a ValueError naming the argument, never a
read past a tensor or a result of the wrong size."""

from __future__ import annotations

import pytest
import torch

from kernels import cpu, reference

T, B, D, H = 5, 4, 2, 6


def _r(*shape):
    return torch.randn(*shape)


def _backends():
    params = [pytest.param(reference, id="reference"), pytest.param(cpu, id="cpu")]
    params.append(pytest.param("triton", id="triton", marks=pytest.mark.interpreter))
    return params


def _module(backend, fn):
    if backend != "triton":
        return getattr(backend, fn)
    from kernels import gru, lstm, rnn

    return getattr({"rnn": rnn, "lstm": lstm, "gru": gru}[fn.split("_")[0]], fn)


# (function, arguments with one wrong, keywords, the argument named, what the message says)
lengths_short = torch.tensor([5, 3], dtype=torch.int64)
CASES = [
    ("rnn_fwd", lambda: (_r(T, B, D, H), _r(D, H, H), _r(D, 1, H), None), {}, "h0", "B = 4 (from gx)"),
    ("rnn_fwd", lambda: (_r(T, B, D, H), _r(D, H, H), None, lengths_short), {}, "lengths", "B = 4 (from gx)"),
    ("rnn_fwd", lambda: (_r(T, B, D, H), _r(D, H, H + 1), None, None), {}, "w_hh", "H = 6 (from gx)"),
    ("rnn_fwd", lambda: (_r(T, B, D, H), _r(D, H, H), None, None), {"nonlinearity": "sigmoid"},
     "nonlinearity", "expected 'tanh' or 'relu', got 'sigmoid'"),
    ("rnn_bwd", lambda: (_r(T - 1, B, D, H), None, _r(T, B, D, H), _r(D, H, H), None), {}, "dy",
     "T = 5 (from y)"),
    ("lstm_fwd", lambda: (_r(T, B, D, 4 * H + 1), _r(D, 4 * H, H), None, None, None, None), {}, "gx",
     "is no 4H"),
    ("lstm_fwd", lambda: (_r(T, B, D, 4 * H), _r(D, 4 * H, H), None, _r(D, B, H - 1), None, None), {}, "c0",
     "H = 6 (from gx)"),
    ("lstm_fwd", lambda: (_r(T, B, D, 4 * H), _r(D, 4 * H, 3), None, None, None, None), {}, "w_hh",
     "P = H = 6 without a projection"),
    ("lstm_fwd", lambda: (_r(T, B, 1, 4 * H), _r(D, 4 * H, H), None, None, None, None), {}, "w_hh",
     "D = 1 (from gx)"),
    ("lstm_bwd", lambda: (None, _r(D, B, H), None, _r(D, 4 * H, H), None, None, _r(T, B, D, 4 * H),
                          _r(T - 1, B, D, H), None), {}, "c_steps", "T = 5 (from gates)"),
    ("lstm_bwd", lambda: (None, _r(D, B, 3), None, _r(D, 4 * H, 3), _r(D, 3, H), None, _r(T, B, D, 4 * H),
                          _r(T, B, D, H), None), {}, "w_hr", None),  # a right projection: no error
    ("gru_fwd", lambda: (_r(T, B, D, 3 * H), _r(D, 3 * H, H), _r(D, H + 1), None, None), {}, "b_hn", "H = 6"),
    ("gru_bwd", lambda: (None, _r(D, B, H), _r(D, 3 * H, H), None, _r(T, B, D, H), _r(T, B, D, 3 * H),
                         _r(T, 2, D, H), None), {}, "ghn", "B = 4 (from gates)"),
]  # fmt: skip


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("fn, make, kwargs, argument, says", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_a_wrong_shape_is_named(backend, fn, make, kwargs, argument, says):
    call = _module(backend, fn)
    if says is None:
        call(*make(), **kwargs)  # the shapes are right: it runs
        return
    with pytest.raises(ValueError, match=rf"{fn}: {argument}: .*{_escape(says)}"):
        call(*make(), **kwargs)


def _escape(text):
    import re

    return re.escape(text)


@pytest.mark.parametrize("backend", _backends())
def test_a_tensor_on_another_device_is_named(backend):
    gx, w_hh = _r(T, B, D, 4 * H), _r(D, 4 * H, H)
    with pytest.raises(ValueError, match=r"lstm_fwd: h0: expected a tensor on cpu \(as gx\), got meta"):
        _module(backend, "lstm_fwd")(gx, w_hh, torch.empty(D, B, H, device="meta"))
