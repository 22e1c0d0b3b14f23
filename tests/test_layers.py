"""rnnkit's layers against torch.nn with copied weights: every output and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.models import SequenceClassifier
from tests._testing import DEVICE, assert_close, tf32_flags

# (class name, extra constructor arguments)
CELLS = {
    "rnn_tanh": ("RNN", {}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": 3}),
    "gru": ("GRU", {}),
}

# odd sizes on purpose: T=1, B=1, H=1, H=51, non-powers of two everywhere
SHAPES = [
    {"T": 1, "B": 1, "I": 1, "H": 1, "num_layers": 1},
    {"T": 7, "B": 5, "I": 3, "H": 51, "num_layers": 2},
    {"T": 6, "B": 3, "I": 4, "H": 5, "num_layers": 3},
]


def make_pair(cell: str, dtype=torch.float64, **kwargs):
    name, extra = CELLS[cell]
    if extra.get("proj_size", 0) >= kwargs["hidden_size"]:
        extra = {**extra, "proj_size": max(kwargs["hidden_size"] - 1, 0)}
    if extra.get("proj_size") == 0:
        extra = {}
    theirs = getattr(nn, name)(**kwargs, **extra, dtype=dtype)
    ours = getattr(rnnkit, name)(**kwargs, **extra, dtype=dtype, backend="reference")
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def initial_states(model: nn.RNNBase, B: int | None, dtype) -> torch.Tensor | tuple:
    D = 2 if model.bidirectional else 1
    P = model.proj_size or model.hidden_size
    lead = (model.num_layers * D,) if B is None else (model.num_layers * D, B)
    h0 = torch.randn(*lead, P, dtype=dtype)
    if model.mode != "LSTM":
        return h0
    return h0, torch.randn(*lead, model.hidden_size, dtype=dtype)


def leaves(hx):
    if hx is None:
        return None
    if isinstance(hx, tuple):
        return tuple(t.clone().requires_grad_() for t in hx)
    return hx.clone().requires_grad_()


def forward_backward(model: nn.Module, x: torch.Tensor, hx=None, packed_lengths=None, enforce_sorted=True):
    """Run forward and backward with fixed upstream gradients; return every tensor by name."""
    x = x.clone().requires_grad_()
    hx = leaves(hx)
    inp = x
    if packed_lengths is not None:
        inp = pack_padded_sequence(
            x, packed_lengths, batch_first=model.batch_first, enforce_sorted=enforce_sorted
        )
    out, state = model(inp) if hx is None else model(inp, hx)
    states = state if isinstance(state, tuple) else (state,)
    result = {"output": out.data if packed_lengths is not None else out}
    result.update({f"state{i}": s for i, s in enumerate(states)})
    gen = torch.Generator().manual_seed(7)
    loss = sum(
        (t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t)).sum() for t in result.values()
    )
    loss.backward()
    result["grad_input"] = x.grad
    for i, h in enumerate(hx if isinstance(hx, tuple) else (hx,) if hx is not None else ()):
        result[f"grad_state{i}"] = h.grad
    for name, p in model.named_parameters():
        result[f"grad_{name}"] = p.grad
    return result


def compare(ours: dict, theirs: dict, dtype=None):
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert_close(name, ours[name], theirs[name], dtype)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{T}-B{B}-I{I}-H{H}-L{num_layers}".format(**s))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero-state", "hx"])
def test_layer_matches_torch(cell, shape, bidirectional, with_hx):
    T, B, I, H, L = (shape[k] for k in ("T", "B", "I", "H", "num_layers"))
    theirs, ours = make_pair(cell, input_size=I, hidden_size=H, num_layers=L, bidirectional=bidirectional)
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = initial_states(theirs, B, torch.float64) if with_hx else None
    compare(forward_backward(ours, x, hx), forward_backward(theirs, x, hx))


@pytest.mark.parametrize("cell", CELLS)
def test_no_bias_batch_first(cell):
    kw = {"input_size": 4, "hidden_size": 6, "num_layers": 2, "bias": False, "batch_first": True}
    theirs, ours = make_pair(cell, bidirectional=True, **kw)
    assert not any("bias" in n for n, _ in ours.named_parameters())
    x = torch.randn(5, 9, 4, dtype=torch.float64)  # [B, T, I]
    hx = initial_states(theirs, 5, torch.float64)
    compare(forward_backward(ours, x, hx), forward_backward(theirs, x, hx))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero-state", "hx"])
def test_unbatched_input(cell, with_hx):
    theirs, ours = make_pair(cell, input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    x = torch.randn(7, 3, dtype=torch.float64)  # [T, I]
    hx = initial_states(theirs, None, torch.float64) if with_hx else None
    compare(forward_backward(ours, x, hx), forward_backward(theirs, x, hx))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_packed_sequence(cell, enforce_sorted, batch_first):
    kw = {
        "input_size": 3,
        "hidden_size": 5,
        "num_layers": 2,
        "bidirectional": True,
        "batch_first": batch_first,
    }
    theirs, ours = make_pair(cell, **kw)
    lengths = torch.tensor([6, 4, 4, 2, 1]) if enforce_sorted else torch.tensor([2, 6, 1, 4, 4])
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1).contiguous()
    hx = initial_states(theirs, 5, torch.float64)
    ours_out = forward_backward(ours, x, hx, lengths, enforce_sorted)
    compare(ours_out, forward_backward(theirs, x, hx, lengths, enforce_sorted))


def test_packed_output_keeps_indices():
    theirs, ours = make_pair("lstm", input_size=2, hidden_size=3)
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([1, 4, 2]), enforce_sorted=False)
    out_theirs, _ = theirs(packed)
    out_ours, _ = ours(packed)
    assert torch.equal(out_ours.batch_sizes, out_theirs.batch_sizes)
    assert torch.equal(out_ours.sorted_indices, out_theirs.sorted_indices)
    assert torch.equal(out_ours.unsorted_indices, out_theirs.unsorted_indices)
    padded, lens = pad_packed_sequence(out_ours)
    assert lens.tolist() == [1, 4, 2]
    assert_close("padded output", padded, pad_packed_sequence(out_theirs)[0])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_lengths_keyword_equals_packing(cell, batch_first):
    """lengths= on padded input gives what torch.nn gives on the packed batch, padded back."""
    kw = {
        "input_size": 3,
        "hidden_size": 4,
        "num_layers": 2,
        "bidirectional": True,
        "batch_first": batch_first,
    }
    theirs, ours = make_pair(cell, **kw)
    lengths = torch.tensor([3, 7, 1, 5])
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1).contiguous()
    out, state = ours(x, lengths=lengths)
    packed_out, state_theirs = theirs(pack_padded_sequence(x, lengths, batch_first, enforce_sorted=False))
    expected, _ = pad_packed_sequence(packed_out, batch_first, total_length=7)
    assert_close("output", out, expected)
    states = state if isinstance(state, tuple) else (state,)
    states_theirs = state_theirs if isinstance(state_theirs, tuple) else (state_theirs,)
    for i, (a, b) in enumerate(zip(states, states_theirs, strict=True)):
        assert_close(f"state{i}", a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_matches_torch(cell):
    theirs, ours = make_pair(
        cell, dtype=torch.float32, input_size=8, hidden_size=51, num_layers=2, bidirectional=True
    )
    x = torch.randn(9, 5, 8)
    hx = initial_states(theirs, 5, torch.float32)
    compare(forward_backward(ours, x, hx), forward_backward(theirs, x, hx), torch.float32)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_between_layers(cell):
    """dropout=1 zeroes every input of layer 2, in both implementations; eval mode disables it."""
    theirs, ours = make_pair(cell, input_size=3, hidden_size=4, num_layers=2, dropout=1.0)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    compare(forward_backward(ours, x), forward_backward(theirs, x))
    theirs.eval()
    ours.eval()
    compare(forward_backward(ours, x), forward_backward(theirs, x))
    out_eval, _ = ours(x)
    ours.train()
    out_train, _ = ours(x)
    assert not torch.allclose(out_eval, out_train), "dropout=1.0 in training changed nothing"


def _kept(model: nn.Module) -> dict[str, torch.Tensor]:
    # weight_drop's mask of each weight_hh, read from the gradient: a dropped weight's is exactly 0
    return {n: (p.grad != 0).to(p.dtype) for n, p in model.named_parameters() if n.startswith("weight_hh")}


# not rnn_relu: a relu unit that is off at every step has exact-zero gradients too, so the mask cannot be
# read from them (its path through the layer is the tanh RNN's, a different nonlinearity in the kernel)
@pytest.mark.parametrize("cell", [c for c in CELLS if c != "rnn_relu"])
def test_weight_drop_is_dropconnect_on_the_recurrent_weights(cell):
    """In training, weight_drop=p is torch.nn's layer run on weight_hh * mask / (1 - p): one mask for
    the batch and every step, about p of each weight_hh dropped, independently per layer and
    direction, nothing else dropped; every output and every gradient as torch.nn's on that weight."""
    p = 0.3
    theirs, ours = make_pair(cell, input_size=3, hidden_size=51, num_layers=2, bidirectional=True)
    ours.weight_drop = p
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    hx = initial_states(theirs, 4, torch.float64)
    got = forward_backward(ours, x, hx)
    kept = _kept(ours)
    assert len(kept) == 4
    for name, mask in kept.items():
        assert abs((1 - mask.mean().item()) - p) < 0.05, f"{name}: {1 - mask.mean().item():.3f} dropped"
    assert not torch.equal(kept["weight_hh_l0"], kept["weight_hh_l0_reverse"])
    for name, param in ours.named_parameters():  # weight_ih, the biases, weight_hr: never dropped
        assert name.startswith("weight_hh") or bool((param.grad != 0).all()), name
    # torch.nn's layer, its weight_hh through the same mask
    weights = {n: w * kept[n] / (1 - p) if n in kept else w for n, w in theirs.named_parameters()}

    def run(inp, state):
        return torch.func.functional_call(theirs, weights, (inp, state))

    want = forward_backward(_Call(run), x, hx)
    want.update({f"grad_{n}": w.grad for n, w in theirs.named_parameters()})
    compare(got, {k: want[k] for k in got})


class _Call(nn.Module):
    # a function as a module with no parameters of its own (forward_backward's model)
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, inp, state=None):
        return self.fn(inp, state)


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_only_in_training(cell):
    """eval mode runs the whole weights (torch.nn's outputs); each training forward draws a new
    mask, also without a gradient (where the CPU would otherwise take torch's fused path)."""
    theirs, ours = make_pair(cell, input_size=3, hidden_size=8, num_layers=2)
    ours.weight_drop = 0.5
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    theirs.eval()
    ours.eval()
    compare(forward_backward(ours, x), forward_backward(theirs, x))
    ours.train()
    with torch.no_grad():
        evaluated = ours.eval()(x)[0]
        first, second = ours.train()(x)[0], ours(x)[0]
    assert not torch.allclose(first, evaluated), "weight_drop in training changed nothing"
    assert not torch.allclose(first, second), "two training forwards drew the same mask"


@pytest.mark.interpreter
def test_weight_drop_on_the_triton_kernels():
    """The Triton backend runs the same masked weight (the same random draw) as the reference."""
    results = []
    for backend in ("reference", "triton"):
        torch.manual_seed(3)
        layer = rnnkit.LSTM(3, 16, bidirectional=True, weight_drop=0.4, backend=backend).to(DEVICE)
        results.append(forward_backward(layer, torch.randn(5, 2, 3, device=DEVICE)))
    compare(results[1], results[0], torch.float32)


@pytest.mark.parametrize("p", [-0.1, 1.0, True, "0.2"])
def test_weight_drop_must_be_a_probability(p):
    with pytest.raises(ValueError, match=r"weight_drop: expected a probability in \[0, 1\), got"):
        rnnkit.GRU(3, 4, weight_drop=p)
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\), got"):
        SequenceClassifier("gru", 3, 4, 2, dropout=p)  # the same check for the model's own dropout


def test_weight_drop_shows_and_keeps_torch_state_dict():
    layer = rnnkit.LSTM(3, 4, weight_drop=0.25)
    assert "weight_drop=0.25" in repr(layer)
    nn.LSTM(3, 4).load_state_dict(layer.state_dict())  # the parameters stay torch's


# relu's derivative jumps at 0: a pre-activation that rounds across 0 in bf16 flips a unit, so the
# relu cell's low-precision check is at the recurrence level (tests/test_reference.py), on the same gx
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", [c for c in CELLS if c != "rnn_relu"])
def test_low_precision_storage(cell, dtype):
    """bf16/fp16 storage with fp32 math: close to the fp32 computation, to the dtype's tolerance."""
    _, ours32 = make_pair(cell, dtype=torch.float32, input_size=4, hidden_size=16, bidirectional=True)
    name, extra = CELLS[cell]
    ours_low = getattr(rnnkit, name)(4, 16, bidirectional=True, dtype=dtype, backend="reference", **extra)
    state = {k: v.to(dtype) for k, v in ours32.state_dict().items()}
    ours_low.load_state_dict(state)
    ours32.load_state_dict({k: v.float() for k, v in state.items()})  # the same rounded weights
    x = torch.randn(6, 3, 4).to(dtype)
    low = forward_backward(ours_low, x)
    ref = forward_backward(ours32, x.float())
    for name in ref:
        assert low[name].dtype == dtype, f"{name}: dtype {low[name].dtype}, expected {dtype}"
        assert_close(name, low[name].float(), ref[name], dtype)


def test_seed_example_bidirectional_lstm():
    """The drop-in check of the foundation issue: torch.nn.LSTM(6, 200, bidirectional=True)."""
    theirs = nn.LSTM(input_size=6, hidden_size=200, num_layers=1, bidirectional=True)
    ours = rnnkit.LSTM(input_size=6, hidden_size=200, num_layers=1, bidirectional=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(100, 30, 6)
    out, (h, c) = ours(x)
    out_t, (h_t, c_t) = theirs(x)
    assert out.shape == out_t.shape == (100, 30, 400)
    assert h.shape == h_t.shape == c.shape == c_t.shape == (2, 30, 200)
    for name, a, b in (("output", out, out_t), ("h_n", h, h_t), ("c_n", c, c_t)):
        err = (a - b).abs().max().item()
        assert err <= 1e-5, f"{name}: max abs error {err:.3e} > 1e-5"


@pytest.mark.parametrize("cell", CELLS)
def test_same_init_and_state_dict_both_ways(cell):
    name, extra = CELLS[cell]
    kw = {"input_size": 3, "hidden_size": 5, "num_layers": 2, "bidirectional": True, **extra}
    torch.manual_seed(3)
    theirs = getattr(nn, name)(**kw)
    torch.manual_seed(3)
    ours = getattr(rnnkit, name)(**kw)
    sd_theirs, sd_ours = theirs.state_dict(), ours.state_dict()
    assert list(sd_ours) == list(sd_theirs), "parameter names or order differ from torch.nn"
    for key in sd_theirs:
        assert torch.equal(sd_ours[key], sd_theirs[key]), f"{key}: initialisation differs from torch.nn"
    fresh_theirs = getattr(nn, name)(**kw)
    fresh_theirs.load_state_dict(ours.state_dict())
    fresh_ours = getattr(rnnkit, name)(**kw)
    fresh_ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 2, 3)
    assert_close("output", fresh_ours(x)[0], fresh_theirs(x)[0], torch.float32)
    # an nn.RNNBase, as torch's layers are, but not a subclass of theirs: torch.compile refuses those
    assert isinstance(ours, nn.RNNBase) and ours.mode == theirs.mode
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("RNN", (3, 5, 2, "relu", False, True, 0.0, True)),
        ("LSTM", (3, 5, 2, False, True, 0.0, True, 4)),
        ("GRU", (3, 5, 2, False, True, 0.0, True)),
    ],
)
def test_positional_arguments_as_torch(name, args):
    # torch.nn's constructors take every argument by position too, in this order
    theirs, ours = getattr(nn, name)(*args), getattr(rnnkit, name)(*args)
    assert repr(ours) == repr(theirs)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]


def test_repr_names_backend():
    assert "backend='reference'" in repr(rnnkit.GRU(2, 3, backend="reference"))
    assert "backend" not in repr(rnnkit.GRU(2, 3))


@pytest.mark.cuda
@pytest.mark.parametrize("cell", CELLS)
def test_layer_on_gpu_matches_cudnn(cell):
    theirs, ours = make_pair(
        cell, dtype=torch.float32, input_size=8, hidden_size=64, num_layers=2, bidirectional=True
    )
    theirs, ours = theirs.cuda(), ours.cuda()
    x = torch.randn(30, 16, 8, device="cuda")
    hx = initial_states(theirs, 16, torch.float32)
    hx = tuple(h.cuda() for h in hx) if isinstance(hx, tuple) else hx.cuda()
    compare(forward_backward(ours, x, hx), forward_backward(theirs, x, hx), torch.float32)


# --- precision: fp32 on a GPU follows torch.nn ------------------------------------------------------


def test_recurrent_precision_follows_cudnn_flag(monkeypatch):
    """As torch.nn's recurrent layers: TF32 for fp32 on a GPU while cuDNN's RNN flag allows it (on
    by default), IEEE when it is off, and always IEEE on the CPU and for other dtypes. Asked of a
    device, not a tensor: no GPU needed."""
    from rnnkit.functional import recurrent_precision

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    tf32_before = torch.backends.cudnn.allow_tf32
    with tf32_flags(cudnn=True, matmul=False):  # torch's defaults
        assert recurrent_precision(gpu, torch.float32) == "tf32"
        assert recurrent_precision(gpu, torch.bfloat16) == recurrent_precision(cpu, torch.float32) == "ieee"
    with tf32_flags(cudnn=False, matmul=True):  # the matmul flag is not the RNN's
        assert recurrent_precision(gpu, torch.float32) == "ieee"
    rnn_flag = getattr(torch.backends.cudnn, "rnn", None)
    if rnn_flag is not None and hasattr(rnn_flag, "fp32_precision"):  # torch >= 2.9: the RNN's own flag
        with tf32_flags(cudnn=False, matmul=False), monkeypatch.context() as patch:  # restored in this order
            patch.setattr(rnn_flag, "fp32_precision", "tf32")
            assert recurrent_precision(gpu, torch.float32) == "tf32"
            patch.setattr(rnn_flag, "fp32_precision", "ieee")
            assert recurrent_precision(gpu, torch.float32) == "ieee"
        assert torch.backends.cudnn.allow_tf32 == tf32_before  # the flags are consistent again


@pytest.mark.interpreter
def test_precision_reaches_the_kernels_forward_and_backward():
    """The precision chosen for a call is the one its forward and backward operators get."""
    from rnnkit import functional, ops
    from tests._testing import OpCalls

    ops.backend_ops("triton")  # registered on first use
    gx = torch.randn(4, 2, 1, 32, device=DEVICE, requires_grad=True)
    w_hh = torch.randn(1, 32, 8, device=DEVICE, requires_grad=True)
    default = "tf32" if DEVICE == "cuda" and functional._cudnn_rnn_allows_tf32() else "ieee"  # as cuDNN
    for asked, expected in ((None, default), ("tf32", "tf32"), ("ieee", "ieee")):
        with OpCalls("triton_lstm_fwd") as fwd, OpCalls("triton_lstm_bwd") as bwd:
            y, _, _ = functional.lstm(gx, w_hh, backend="triton", precision=asked)
            y.sum().backward()
        assert [call[-1] for call in fwd.args + bwd.args] == [expected, expected]
    with pytest.raises(ValueError, match=r"precision: expected 'ieee', 'tf32' or None .* got 'high'"):
        functional.lstm(gx, w_hh, precision="high")


@pytest.mark.cuda
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_fp32_on_gpu_runs_tf32_like_cudnn(monkeypatch, cell):
    """With torch's defaults (cuDNN may use TF32) the kernels' products run in TF32 and agree with
    cuDNN to TF32's precision; with the flag off they run IEEE fp32 and agree to fp32's."""
    from kernels import _config

    precisions = []
    launch = _config.launch

    def spy(wrapped, grid, *args, **meta):
        precisions.append(meta["PRECISION"])
        launch(wrapped, grid, *args, **meta)

    monkeypatch.setattr(_config, "launch", spy)
    for module in ("kernels.tiled", "kernels.split"):
        monkeypatch.setattr(f"{module}.launch", spy)
    theirs = getattr(nn, cell)(32, 128, num_layers=2).cuda()
    ours = getattr(rnnkit, cell)(32, 128, num_layers=2, backend="triton").cuda()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(50, 16, 32, device="cuda")
    outputs = {}
    for tf32 in (True, False):
        precisions.clear()
        with torch.no_grad(), tf32_flags(cudnn=tf32, matmul=False):
            outputs[tf32] = (ours(x)[0], theirs(x)[0])
        assert set(precisions) == {"tf32" if tf32 else "ieee"}, precisions
    assert_close("IEEE fp32 against cuDNN", outputs[False][0], outputs[False][1], torch.float32)
    tf32_error = (outputs[True][0] - outputs[True][1]).abs().max().item()
    assert tf32_error <= 1e-2, f"TF32 against cuDNN's TF32: max abs error {tf32_error:.2e}"
    assert not torch.equal(outputs[True][0], outputs[False][0]), "TF32 and IEEE gave the same bits"
