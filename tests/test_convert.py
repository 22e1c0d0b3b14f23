"""`rnnkit.convert`: a model built on torch.nn's recurrent layers runs on rnnkit's, and back, with
the same Parameter objects, outputs, gradients and state_dict; an optimizer built before keeps
training it."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from tests._testing import assert_close

f64 = torch.float64


class Seq2Seq(nn.Module):
    """An encoder-decoder: a two-layer bidirectional batch-first LSTM encoder, a GRUCell decoder."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.bridge = nn.Linear(12, 5)
        self.decoder = nn.GRUCell(3, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        out, (h_n, _) = self.encoder(x)
        h = torch.tanh(self.bridge(torch.cat([h_n[-2], h_n[-1]], dim=-1)))
        ys = []
        for _ in range(4):
            h = self.decoder(self.head(h), h)
            ys.append(self.head(h))
        return torch.stack(ys), out


class Tagger(nn.Module):
    """A bidirectional tagger over packed sequences of different lengths."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 5, bidirectional=True)
        self.out = nn.Linear(10, 2)

    def forward(self, x):
        lengths = torch.tensor([7, 3, 5])
        packed, _ = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return self.out(pad_packed_sequence(packed, total_length=x.shape[0])[0])


class Mixed(nn.Module):
    """A projection, an RNN with relu, the three cells in a ModuleList, a Sequential."""

    def __init__(self):
        super().__init__()
        self.stack = nn.Sequential(nn.Identity(), nn.LSTM(4, 6, proj_size=3))
        self.relu = nn.RNN(3, 5, nonlinearity="relu", bias=False)
        self.cells = nn.ModuleList([nn.RNNCell(5, 4), nn.LSTMCell(4, 4), nn.GRUCell(4, 2)])

    def forward(self, x):
        y, _ = self.stack(x)
        y, _ = self.relu(y)
        h = self.cells[0](y[-1])
        h, _ = self.cells[1](h)
        return y, self.cells[2](h)


ZOO = {"seq2seq": (Seq2Seq, (3, 7, 4)), "tagger": (Tagger, (7, 3, 4)), "mixed": (Mixed, (7, 3, 4))}
LAYERS = (nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell)


def _outputs_and_grads(model, x):
    out = torch.utils._pytree.tree_leaves(model(x))
    loss = sum((o * o).sum() for o in out)
    return out, torch.autograd.grad(loss, [x, *model.parameters()])


@pytest.mark.parametrize("name", list(ZOO))
def test_a_converted_model_gives_torchs_outputs_and_gradients(name):
    make, shape = ZOO[name]
    torch.manual_seed(0)
    model = make().to(f64)
    theirs = copy.deepcopy(model)
    params = list(model.parameters())
    converted = rnnkit.convert(model, backend="reference")
    assert converted is model
    assert [id(p) for p in converted.parameters()] == [id(p) for p in params]  # the same Parameters
    kinds = [type(m) for m in converted.modules()]
    assert not any(k in LAYERS for k in kinds), kinds  # every torch.nn layer was replaced
    assert any(k.__module__ == "rnnkit.modules" for k in kinds)
    assert all(m.backend == "reference" for m in converted.modules() if hasattr(m, "backend"))
    x = torch.randn(*shape, dtype=f64, requires_grad=True)
    (ours, ours_g), (want, want_g) = _outputs_and_grads(converted, x), _outputs_and_grads(theirs, x)
    for k, (a, b) in enumerate(zip(ours + list(ours_g), want + list(want_g), strict=True)):
        assert_close(f"{name}[{k}]", a, b)
    # the state_dicts stay interchangeable, both ways
    assert list(converted.state_dict()) == list(theirs.state_dict())
    make().to(f64).load_state_dict(converted.state_dict())
    converted.load_state_dict(theirs.state_dict())


def test_an_optimizer_built_before_keeps_training_the_model():
    torch.manual_seed(1)
    model, twin = Seq2Seq().to(f64), None
    twin = copy.deepcopy(model)
    opt, opt_twin = (torch.optim.Adam(m.parameters(), lr=0.01) for m in (model, twin))
    rnnkit.convert(model)
    x = torch.randn(3, 7, 4, dtype=f64)
    for _ in range(3):
        for m, o in ((model, opt), (twin, opt_twin)):
            o.zero_grad()
            loss = sum((y * y).sum() for y in torch.utils._pytree.tree_leaves(m(x)))
            loss.backward()
            o.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert_close(name, a, b)


def test_settings_and_mode_carry_over_and_back_to_torch():
    torch.manual_seed(2)
    lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True, dropout=0.25, bidirectional=True, proj_size=2)
    lstm.weight_hh_l1.requires_grad_(False)
    lstm.eval()
    ours = rnnkit.convert(lstm, backend="cpu")  # the module itself is a layer: a new one
    assert type(ours) is rnnkit.LSTM and ours is not lstm and not ours.training
    for setting in ("input_size", "hidden_size", "num_layers", "batch_first", "dropout", "bidirectional",
                    "proj_size", "bias"):  # fmt: skip
        assert getattr(ours, setting) == getattr(lstm, setting), setting
    assert ours.backend == "cpu" and not ours.weight_hh_l1.requires_grad
    assert ours.weight_ih_l0 is lstm.weight_ih_l0
    back = rnnkit.convert(ours, to="torch")
    assert type(back) is nn.LSTM and back.weight_ih_l0 is lstm.weight_ih_l0 and not back.training
    x = torch.randn(2, 5, 3)
    assert_close("round trip", back(x)[0], lstm(x)[0])
    cell = rnnkit.convert(nn.RNNCell(3, 4, nonlinearity="relu", bias=False))
    assert type(cell) is rnnkit.RNNCell and cell.nonlinearity == "relu" and cell.bias_ih is None
    assert type(rnnkit.convert(cell, to="torch")) is nn.RNNCell


def test_what_is_left_alone_and_what_is_refused():
    class MyLSTM(nn.LSTM):  # a subclass: its forward may be its own
        pass

    model = nn.Sequential(MyLSTM(3, 4), rnnkit.GRU(3, 4, backend="reference"), nn.Linear(4, 4))
    rnnkit.convert(model, backend="cpu")
    assert type(model[0]) is MyLSTM and model[1].backend == "reference"  # rnnkit's own: as it was
    with pytest.raises(ValueError, match=r"1: GRU\(weight_drop=0.2\) has no torch.nn equivalent"):
        rnnkit.convert(nn.Sequential(nn.Linear(3, 3), rnnkit.GRU(3, 4, weight_drop=0.2)), to="torch")
    with pytest.raises(ValueError, match=r"module: LSTM\(cell_zoneout=0.1\) has no torch.nn equivalent"):
        rnnkit.convert(rnnkit.LSTM(3, 4, cell_zoneout=0.1), to="torch")
    with pytest.raises(ValueError, match="to: expected 'rnnkit' or 'torch', got 'jax'"):
        rnnkit.convert(model, to="jax")
    with pytest.raises(ValueError, match="backend: applies to to='rnnkit' only"):
        rnnkit.convert(model, to="torch", backend="cpu")
    with pytest.raises(ValueError, match=r"backend: expected one of .*, got 'cudnn'"):
        rnnkit.convert(model, backend="cudnn")
    with pytest.raises(TypeError, match=r"module: expected a torch\.nn\.Module, got dict"):
        rnnkit.convert({})


def test_diagnostics_take_a_torch_nn_model_as_a_converted_copy():
    """diagnose and advise on a model with torch.nn's layers measure a converted copy and say so in a
    warning; the model keeps its torch.nn layers and its gradients; the recorder, which must see the
    user's own passes, names rnnkit.convert."""
    from diagnostics import GradientFlowRecorder, advise, diagnose

    torch.manual_seed(3)
    model = Tagger()
    x = torch.randn(7, 3, 4)

    def loss_fn(m, batch):
        return m(batch)[-1].pow(2).sum()

    with pytest.warns(UserWarning, match="Tagger has torch.nn recurrent layers.*the model is not changed"):
        report = diagnose(model, loss_fn, x, lyapunov=2)
    assert type(model.rnn) is nn.LSTM and model.rnn.weight_hh_l0.grad is None
    assert len(report.lines) == 4 and report.lyapunov  # h and c of both directions, on the copy
    with pytest.warns(UserWarning, match="diagnosing a copy on rnnkit's twins"):
        advice = advise(model, loss_fn, [x], task_length=7)
    assert advice.current.lines and type(model.rnn) is nn.LSTM
    # the recorder sees the user's own passes: the layers run as their twins inside the block only
    theirs = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="while recording, each runs as rnnkit's twin on the same"):
        recorder = GradientFlowRecorder(model)
    with recorder as rec:
        loss_fn(model, x).backward()
    assert "forward" not in vars(model.rnn) and type(model.rnn) is nn.LSTM  # itself again
    ours = rnnkit.convert(copy.deepcopy(theirs))
    with GradientFlowRecorder(ours) as want:
        loss_fn(ours, x).backward()
    assert [s.label() for s in rec.records] == [s.label() for s in want.records] and rec.records
    for got, expected in zip(rec.records, want.records, strict=True):
        assert_close(got.label(), got.norms, expected.norms)
    loss_fn(theirs, x).backward()  # the gradients reached the model's own parameters, as torch.nn's
    for (name, a), b in zip(model.named_parameters(), theirs.parameters(), strict=True):
        assert_close(name, a.grad, b.grad, torch.float32)
    with pytest.raises(ValueError, match="model: no recurrent layer found in Linear"):
        GradientFlowRecorder(nn.Linear(2, 2))


def test_the_readme_example_runs(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- example: convert -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(block + "\nassert type(model[1]) is rnnkit.LSTM, type(model[1])\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
