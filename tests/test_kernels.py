"""Every Triton kernel against the reference: all outputs, final states, gradients and the record.

Under TRITON_INTERPRET=1 on the CPU (CI) at small odd shapes; natively on a GPU when there is one.
Outputs are allocated as NaN (the ``poisoned`` fixture), so an unwritten slot fails.
"""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels._config import KernelPathError, interpreted
from tests._data import shared_data
from tests._testing import DEVICE, assert_close, compare_outputs, kernel_module, make_inputs, run_backward

pytestmark = pytest.mark.interpreter

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]
# (T, B, H): T in {1, 7}, B in {1, 5, 17}, H in {1, 51, 64, 100}: below, at and above a tile
SHAPES = [(1, 1, 1), (7, 5, 51), (7, 17, 64), (7, 1, 100), (1, 17, 51)]


def resident_refused(kernel_path, cell, B, H, *, backward) -> bool:
    """Whether `kernels._config` refuses a forced resident launch here: W_hh and its scratch would
    not fit in the device's shared memory (sm_90's 227 KiB under the interpreter)."""
    from kernels._config import KernelPathError, launch_config

    if kernel_path != "resident" or cell == "lstm_proj":
        return False
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell.split("_")[0]]
    try:
        launch_config(B, H, H, G, torch.empty(0, device=DEVICE), backward=backward)
    except KernelPathError:
        return True
    return False


@pytest.fixture(params=["resident", "split", "streamed"])
def kernel_path(request, monkeypatch):
    """Every kernel path on every shape (`kernels._config` picks by H otherwise; the LSTM with a
    projection never runs resident). The split path runs one phase per launch here."""
    from kernels import _config

    monkeypatch.setattr(_config, "KERNEL_PATH", request.param)
    return request.param


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-H{}".format(*s))
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("variant", ["plain", "state+lengths"])
def test_kernel_matches_reference(poisoned, kernel_path, cell, shape, D, variant):
    T, B, H = shape
    full = variant != "plain"
    args, kwargs, upstream = make_inputs(cell, T, B, D, H, with_state=full, with_lengths=full)
    name = cell.split("_")[0]
    ours_mod = kernel_module(cell)
    fwd_ref = getattr(reference, f"{name}_fwd")(*args, **kwargs)
    if resident_refused(kernel_path, cell, B, H, backward=False):
        # a forced path that cannot fit says so before launching (never Triton's OutOfResources)
        with pytest.raises(KernelPathError, match="bytes of shared memory per program"):
            getattr(ours_mod, f"{name}_fwd")(*args, **kwargs)
        return
    fwd_ours = getattr(ours_mod, f"{name}_fwd")(*args, **kwargs)
    compare_outputs("fwd.", fwd_ours, fwd_ref, torch.float32)
    if resident_refused(kernel_path, cell, B, H, backward=True):
        with pytest.raises(KernelPathError, match="bytes of shared memory per program"):
            run_backward(ours_mod, cell, args, kwargs, fwd_ref, upstream, False)
        return
    for record in (False, True):
        ref = run_backward(reference, cell, args, kwargs, fwd_ref, upstream, record)
        ours = run_backward(ours_mod, cell, args, kwargs, fwd_ref, upstream, record)
        compare_outputs(f"bwd(record={record}).", ours, ref, torch.float32)


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj"])
@pytest.mark.parametrize("shape", [(7, 5, 51), (1, 17, 64)], ids=lambda s: "T{}-B{}-H{}".format(*s))
def test_lstm_with_zoneouts_expectation_matches_reference(poisoned, kernel_path, cell, shape):
    """Cell zoneout's expectation (``zoneout=p``: i' = (1 - p) i, f' = p + (1 - p) f) on every
    kernel path, both directions, states and lengths: all outputs, gradients and the record."""
    T, B, H = shape
    args, _, upstream = make_inputs(cell, T, B, 2, H, with_state=True, with_lengths=True)
    kwargs = {"zoneout": 0.3}
    from kernels import lstm

    fwd_ref = reference.lstm_fwd(*args, **kwargs)
    if resident_refused(kernel_path, cell, B, H, backward=True):
        return  # the path refusal itself is tested above
    compare_outputs("fwd.", lstm.lstm_fwd(*args, **kwargs), fwd_ref, torch.float32)
    for record in (False, True):
        ref = run_backward(reference, cell, args, kwargs, fwd_ref, upstream, record)
        ours = run_backward(lstm, cell, args, kwargs, fwd_ref, upstream, record)
        compare_outputs(f"bwd(record={record}).", ours, ref, torch.float32)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_kernel_runs_the_path_it_was_given(kernel_path, cell):
    """The forced path is the one that runs (so the matrix above tests both kernels)."""
    from kernels._config import capture_launches

    args, kwargs, upstream = make_inputs(cell, 3, 2, 1, 16, with_state=True, with_lengths=False)
    name = cell.split("_")[0]
    module = kernel_module(cell)
    with capture_launches() as launches:
        fwd = getattr(module, f"{name}_fwd")(*args, **kwargs)
        run_backward(module, cell, args, kwargs, fwd, upstream, record=True)
    names = [launch.kernel.__name__ for launch in launches]
    if kernel_path == "split":  # the interpreter: one launch per phase (the first and 3 steps); a GPU: one
        per_pass = 4 if interpreted() else 1
        assert names == ["_split_fwd_kernel"] * per_pass + ["_split_bwd_kernel"] * per_pass, names
        return
    assert names == [f"_{kernel_path}_fwd_kernel", f"_{kernel_path}_bwd_kernel"], names


def test_auto_path_by_hidden_size(monkeypatch):
    """Unforced: W_hh stays on chip up to RESIDENT_MAX_H, and never with a projection."""
    from kernels import _config

    monkeypatch.setattr(_config, "KERNEL_PATH", "auto")
    limit = _config.RESIDENT_MAX_H
    fp32 = torch.empty(0)
    for G in (1, 3, 4):
        assert _config.launch_config(8, limit, limit, G, fp32).resident
        assert _config.launch_config(8, limit, limit, G, fp32, backward=True).resident
        assert not _config.launch_config(8, limit + 1, limit + 1, G, fp32).resident
    assert not _config.launch_config(8, 32, 16, 4, fp32).resident  # LSTM proj_size
    monkeypatch.setattr(_config, "KERNEL_PATH", "fastest")
    with pytest.raises(ValueError, match=r"KERNEL_PATH must be .* got 'fastest'"):
        _config.launch_config(8, 32, 32, 4, fp32)


def test_resident_path_only_where_it_fits_in_shared_memory(monkeypatch):
    """sm_90 allows 227 KiB per program: an LSTM's or GRU's W_hh at H = 100 (tile 128, 4 gates: 256
    KiB in fp32) does not fit, an RNN's (64 KiB) does. Forced, the resident path says so; chosen
    automatically, it falls back to streaming W_hh."""
    from kernels import _config

    fp32 = torch.empty(0, device="meta")  # no device to ask: the sm_90 figure
    assert _config.shared_memory_limit(fp32.device) == _config.SM90_SHARED_MEMORY == 232448
    monkeypatch.setattr(_config, "KERNEL_PATH", "resident")
    assert _config.launch_config(16, 100, 100, 1, fp32, backward=True).resident
    for G in (3, 4):
        with pytest.raises(_config.KernelPathError, match=r"needs 2\d{5} bytes .* allows 232448; use"):
            _config.launch_config(16, 100, 100, G, fp32)
    assert not _config.launch_config(16, 100, 50, 4, fp32).resident  # a projection streams, forced or not
    monkeypatch.setattr(_config, "KERNEL_PATH", "auto")
    monkeypatch.setattr(_config, "RESIDENT_MAX_H", 1 << 20)  # the rules would take it: the budget does not
    assert _config.launch_config(16, 100, 100, 1, fp32).resident
    assert not _config.launch_config(16, 100, 100, 4, fp32).resident
    assert not _config.launch_config(16, 100, 100, 3, fp32, backward=True).resident


def test_launch_precision(monkeypatch):
    """fp32 products in TF32 only where asked for; bf16/fp16 on tensor cores: upcast (exactly) to TF32
    on design A, as they are on the split path. Compiled only: the interpreter has no TF32."""
    from kernels import _config

    fp32, bf16 = torch.empty(0), torch.empty(0, dtype=torch.bfloat16)
    if interpreted():
        assert _config.launch_config(8, 64, 64, 4, fp32, "tf32").PRECISION == "ieee"
    monkeypatch.setattr(_config, "interpreted", lambda: False)
    for path in ("streamed", "split"):
        monkeypatch.setattr(_config, "KERNEL_PATH", path)
        assert _config.launch_config(8, 64, 64, 4, fp32, "tf32").PRECISION == "tf32"
        assert _config.launch_config(8, 64, 64, 4, fp32, "ieee").PRECISION == "ieee"
    bf16_precision = {}
    for path in ("streamed", "split"):
        monkeypatch.setattr(_config, "KERNEL_PATH", path)
        bf16_precision[path] = _config.launch_config(8, 64, 64, 4, bf16, "ieee").PRECISION
    assert bf16_precision == {"streamed": "tf32", "split": "ieee"}  # split: bf16 operands, "ieee" unused
    with pytest.raises(ValueError, match="precision: expected 'ieee' or 'tf32', got 'fp16'"):
        _config.launch_config(8, 64, 64, 4, fp32, "fp16")


def test_launchers_refuse_strided_inputs():
    """The kernels read dense tensors; the launchers do not copy (their callers do)."""
    from kernels import lstm

    args, _, _ = make_inputs("lstm", 3, 4, 1, 8, with_state=True, with_lengths=False)
    gx, w_hh, h0, c0, _, _ = args
    strided = h0.transpose(1, 2).contiguous().transpose(1, 2)
    with pytest.raises(ValueError, match=r"lstm_fwd: h0 must be contiguous, got shape \[1, 4, 8\]"):
        lstm.lstm_fwd(gx, w_hh, strided, c0)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_launchers_refuse_dtypes_they_would_round(cell):
    """float64 is refused, not computed in float32 and stored back as float64; so is a state of
    another dtype than gx, and lengths that are not int64. Forward and backward."""
    from kernels import reference

    module = kernel_module(cell)
    name = cell.split("_")[0]
    fwd = getattr(module, f"{name}_fwd")
    args, kwargs, upstream = make_inputs(cell, 3, 4, 1, 8, with_state=True, with_lengths=True)
    wide = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    with pytest.raises(TypeError, match=rf"{name}_fwd: gx has dtype torch.float64; the Triton kernels take "):
        fwd(*wide, **kwargs)
    half = list(args)
    at = 3 if name == "gru" else 2  # h0
    half[at] = args[at].half()
    with pytest.raises(TypeError, match=rf"{name}_fwd: h0 must have the dtype of gx, torch.float32, got "):
        fwd(*half, **kwargs)
    short = [a.int() if a is args[-1] else a for a in args]  # the lengths, last
    with pytest.raises(TypeError, match=rf"{name}_fwd: lengths must be int64, got torch.int32"):
        fwd(*short, **kwargs)
    saved = getattr(reference, f"{name}_fwd")(*wide, **kwargs)  # what the backward would be given
    with pytest.raises(TypeError, match=rf"{name}_bwd: .* has dtype torch.float64; the Triton kernels take"):
        wide_upstream = {k: v.double() for k, v in upstream.items()}
        run_backward(module, cell, wide, kwargs, saved, wide_upstream, record=False)


@pytest.mark.parametrize("cell", CELLS)
def test_split_kernels_with_the_narrowest_slices(poisoned, monkeypatch, cell):
    """The split path with the fewest units per program tl.dot allows (LSTM and GRU 4, RNN 16, a
    projection 16 units and 8 of its columns): padded lanes, many programs, both directions."""
    from kernels import _config

    monkeypatch.setattr(_config, "KERNEL_PATH", "split")
    monkeypatch.setattr(_config, "INTERPRETER_SPLIT_UNITS", 1)
    T, B, H = 5, 17, 51
    args, kwargs, upstream = make_inputs(cell, T, B, 2, H, with_state=True, with_lengths=True)
    name = cell.split("_")[0]
    ours_mod = kernel_module(cell)
    fwd_ref = getattr(reference, f"{name}_fwd")(*args, **kwargs)
    with _config.capture_launches() as launches:
        getattr(ours_mod, f"{name}_fwd")(*args, **kwargs)
    units = 16 if name == "rnn" or cell == "lstm_proj" else 4
    # (programs splitting H, batch tiles, directions); the batch tile is the launcher's choice (16 rows
    # under the interpreter; on a GPU 16 or 32 by the SMs the grid may fill)
    rows = launches[0].meta["BB"]
    assert rows in ((16,) if interpreted() else (16, 32)), rows
    assert launches[0].grid == (-(-H // units), -(-B // rows), 2)
    compare_outputs("fwd.", getattr(ours_mod, f"{name}_fwd")(*args, **kwargs), fwd_ref, torch.float32)
    ref = run_backward(reference, cell, args, kwargs, fwd_ref, upstream, True)
    ours = run_backward(ours_mod, cell, args, kwargs, fwd_ref, upstream, True)
    compare_outputs("bwd.", ours, ref, torch.float32)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_kernel_inference_saves_nothing(poisoned, kernel_path, cell):
    args, _, _ = make_inputs(cell, 7, 5, 2, 51, with_state=True, with_lengths=True)
    name = cell.split("_")[0]
    ours = getattr(kernel_module(cell), f"{name}_fwd")(*args, training=False)
    ref = getattr(reference, f"{name}_fwd")(*args, training=False)
    compare_outputs("fwd.", ours, ref, torch.float32)
    assert ours[-1] is None and ours[-2] is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_kernel_low_precision(poisoned, kernel_path, cell, dtype):
    """fp16/bf16 storage, fp32 math: the kernel equals the reference on the same inputs."""
    args, kwargs, upstream = make_inputs(cell, 7, 5, 2, 51, with_state=True, with_lengths=True, dtype=dtype)
    name = cell.split("_")[0]
    ours_mod = kernel_module(cell)
    fwd_ref = getattr(reference, f"{name}_fwd")(*args, **kwargs)
    compare_outputs("fwd.", getattr(ours_mod, f"{name}_fwd")(*args, **kwargs), fwd_ref, dtype)
    ref = run_backward(reference, cell, args, kwargs, fwd_ref, upstream, True)
    ours = run_backward(ours_mod, cell, args, kwargs, fwd_ref, upstream, True)
    compare_outputs("bwd.", ours, ref, dtype)


LAYERS = {"RNN": {}, "LSTM": {}, "LSTM-proj": {"proj_size": 5}, "GRU": {}}


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_triton_backend_matches_reference(poisoned, kernel_path, layer):
    """rnnkit layers with backend="triton" against backend="reference": outputs and every gradient,
    on each kernel path."""
    import rnnkit

    cls = getattr(rnnkit, layer.split("-")[0])
    kw = {"num_layers": 2, "bidirectional": True, "device": DEVICE, **LAYERS[layer]}
    ref = cls(6, 11, backend="reference", **kw)
    ours = cls(6, 11, backend="triton", **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(7, 5, 6, device=DEVICE)
    lengths = torch.tensor([7, 3, 5, 1, 6])
    results = []
    for model in (ref, ours):
        xi = x.clone().requires_grad_()
        out, state = model(xi, lengths=lengths)
        states = state if isinstance(state, tuple) else (state,)
        gen = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=gen).to(t)).sum() for t in (out, *states))
        loss.backward()
        named = {"output": out, **{f"state{i}": s for i, s in enumerate(states)}, "grad_input": xi.grad}
        named.update({f"grad_{n}": p.grad for n, p in model.named_parameters()})
        results.append(named)
    for name, value in results[0].items():
        assert_close(name, results[1][name], value, torch.float32)


MNIST_DIR = shared_data("mnist")


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST files at {MNIST_DIR}")
def test_mnist_rowwise_lstm_trains_like_reference(poisoned, monkeypatch):
    """The seed MNIST model (rows as steps, hidden 256, 2 layers) trained for 3 batches with each
    backend: the same first gradients, and the same losses to 1e-4 at every batch (Adam divides by
    sqrt(v), so tiny gradient differences move weights by ~lr: the weights are not compared)."""
    from kernels import _config
    from rnnkit.datasets import load_mnist
    from rnnkit.models import SequenceClassifier

    monkeypatch.setattr(_config, "INTERPRETER_TILE_CAP", 256)  # one tile: fast under the interpreter
    images, labels = load_mnist(MNIST_DIR, "train")
    x = (images[:48].float() / 255).to(DEVICE)  # [N, 28, 28]
    y = labels[:48].to(DEVICE)
    losses, first_grads = {}, {}
    for backend in ("reference", "triton"):
        torch.manual_seed(0)
        model = SequenceClassifier("lstm", 28, 256, 10, num_layers=2, backend=backend).to(DEVICE)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses[backend] = []
        for batch in range(3):
            rows = slice(16 * batch, 16 * (batch + 1))
            logits = model(x[rows].transpose(0, 1))  # [T=28 rows, B, 28 pixels]
            loss = torch.nn.functional.cross_entropy(logits, y[rows])
            optimizer.zero_grad()
            loss.backward()
            if batch == 0:
                first_grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
            optimizer.step()
            losses[backend].append(loss.item())
    for step, (a, b) in enumerate(zip(losses["triton"], losses["reference"], strict=True)):
        assert abs(a - b) <= 1e-4, f"batch {step}: loss {a:.6f} with triton, {b:.6f} with the reference"
    for name, value in first_grads["reference"].items():
        assert_close(f"grad {name}", first_grads["triton"][name], value, torch.float32)


@pytest.mark.parametrize(
    ("B", "H", "BB", "BK"),
    [(8, 128, 16, 128), (16, 768, 16, 128), (32, 128, 16, 128), (64, 512, 32, 64), (100, 256, 32, 64)],
)
def test_split_batch_tile_and_chunk(monkeypatch, B, H, BB, BK):
    """The split path's block sizes on a GPU (H200 figures, as on meta tensors): at least two batch
    tiles past 16 rows, at most 32 rows, and the backward's reduction chunk BK = 2048 / BB."""
    from kernels import _config

    monkeypatch.setattr(_config, "interpreted", lambda: False)
    monkeypatch.setattr(_config, "KERNEL_PATH", "split")
    like = torch.empty(0, device="meta")
    for backward in (False, True):
        cfg = _config.launch_config(B, H, H, 4, like, "tf32", backward=backward)
        assert (cfg.path, cfg.BB, cfg.BK) == ("split", BB, BK), cfg
        programs = -(-H // cfg.BH) * -(-B // cfg.BB)
        assert programs <= _config.SM90_SMS, cfg
