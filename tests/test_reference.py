"""The reference recurrences: gradcheck in float64, per-step gradient record against autograd,
lengths semantics, low-precision storage, inference mode."""

from __future__ import annotations

import os

import pytest
import torch

import rnnkit
from kernels import reference
from rnnkit import functional
from tests._naive import naive_layer
from tests._testing import OpCalls, assert_close

f64 = {"dtype": torch.float64}


def recurrence_inputs(cell: str, T=4, B=3, D=2, H=2, P=None, dtype=torch.float64, scale=0.5):
    """Random differentiable inputs of functional.<cell>: (args, kwargs)."""
    G = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "lstm_proj": 4, "gru": 3}[cell]
    P = P or H
    gx = torch.randn(T, B, D, G * H, dtype=dtype)
    w_hh = torch.randn(D, G * H, P, dtype=dtype) * scale
    h0 = torch.randn(D, B, P, dtype=dtype)
    if cell.startswith("rnn"):
        return "rnn", [gx, w_hh, h0], {"nonlinearity": cell[4:]}
    if cell == "gru":
        return "gru", [gx, w_hh, torch.randn(D, H, dtype=dtype), h0], {}
    c0 = torch.randn(D, B, H, dtype=dtype)
    if cell == "lstm_proj":
        return "lstm", [gx, w_hh, h0, c0], {"w_hr": torch.randn(D, P, H, dtype=dtype) * scale}
    return "lstm", [gx, w_hh, h0, c0], {}


CELL_NAMES = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("lengths", [None, [3, 1, 4]], ids=["full", "lengths"])
def test_gradcheck(cell, D, lengths):
    P = 3 if cell == "lstm_proj" else None
    fn, args, kwargs = recurrence_inputs(cell, D=D, P=P)
    if cell == "rnn_relu":  # keep pre-activations away from relu's kink at 0
        args[0] = args[0] + torch.sign(args[0]) * 0.5
    tensors = [t.requires_grad_() for t in args] + [
        t.requires_grad_() for t in kwargs.values() if torch.is_tensor(t)
    ]
    n_args = len(args)

    def run(*ts):
        kw = dict(kwargs)
        if "w_hr" in kw:
            kw["w_hr"] = ts[n_args]
        return getattr(functional, fn)(*ts[:n_args], lengths=lengths, backend="reference", **kw)

    assert torch.autograd.gradcheck(run, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_lengths_equal_separate_sequences(cell):
    """A batch with lengths equals running each sequence alone, truncated to its length."""
    fn, args, kwargs = recurrence_inputs(cell, T=6, B=4, D=2, H=5)
    lengths = torch.tensor([6, 2, 1, 4])
    fwd = getattr(reference, f"{fn}_fwd")
    if fn == "lstm":
        kwargs["lengths"] = lengths
        gx, w_hh, h0, c0 = args
        out = fwd(gx, w_hh, h0, c0, **kwargs)
        for b, n in enumerate(lengths.tolist()):
            alone = fwd(gx[:n, b : b + 1], w_hh, h0[:, b : b + 1], c0[:, b : b + 1])
            assert_close(f"y[:{n}, {b}]", out.y[:n, b], alone.y[:, 0])
            assert_close(f"h_n[:, {b}]", out.h_n[:, b], alone.h_n[:, 0])
            assert_close(f"c_n[:, {b}]", out.c_n[:, b], alone.c_n[:, 0])
            assert torch.all(out.y[n:, b] == 0), f"y[{n}:, {b}] past the length is not zero"
        return
    extra = args[2:-1]  # GRU's b_hn
    gx, w_hh, h0 = args[0], args[1], args[-1]
    out = fwd(gx, w_hh, *extra, h0, lengths, **kwargs)
    for b, n in enumerate(lengths.tolist()):
        alone = fwd(gx[:n, b : b + 1], w_hh, *extra, h0[:, b : b + 1], **kwargs)
        assert_close(f"y[:{n}, {b}]", out.y[:n, b], alone.y[:, 0])
        assert_close(f"h_n[:, {b}]", out.h_n[:, b], alone.h_n[:, 0])
        assert torch.all(out.y[n:, b] == 0), f"y[{n}:, {b}] past the length is not zero"


def test_previous_states():
    steps = torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 2, 2, 1).contiguous()  # t+1 at step t
    steps[3:, 1] = 0  # sequence 1 has length 3
    init = torch.full((2, 2, 1), -1.0)
    prev = reference.previous_states(steps, init, torch.tensor([4, 3]))
    assert prev[:, 0, 0, 0].tolist() == [-1, 1, 2, 3]  # forward: the step before, init at t=0
    assert prev[:, 0, 1, 0].tolist() == [2, 3, 4, -1]  # reverse: the step after, init at t=3
    assert prev[:3, 1, 1, 0].tolist() == [2, 3, -1]  # reverse, length 3: init at t=2


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_record_equals_autograd(name):
    """The recorded dL/dh_t (and dL/dc_t) equal autograd's gradient of every step's state."""
    module = getattr(rnnkit, name)(3, 5, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 4, 3, **f64)
    lengths = torch.tensor([6, 3, 1, 5])
    g_out, g_h, g_c = torch.randn(6, 4, 10, **f64), torch.randn(2, 4, 5, **f64), torch.randn(2, 4, 5, **f64)

    recorded = []
    handle = module.register_step_grad_hook(lambda m, layer, grads: recorded.append((layer, grads)))
    out, state = module(x, lengths=lengths)
    h_n, c_n = state if name == "LSTM" else (state, None)
    loss = (out * g_out).sum() + (h_n * g_h).sum() + (0 if c_n is None else (c_n * g_c).sum())
    loss.backward()
    handle.remove()
    assert [layer for layer, _ in recorded] == [0]
    grads = recorded[0][1]
    assert grads.h.shape == (6, 4, 2, 5) and grads.h.dtype == torch.float64
    assert torch.equal(grads.lengths, lengths)

    out_naive, finals, steps = naive_layer(module, x, lengths)
    loss = (out_naive * g_out).sum() + sum((h * g_h[d]).sum() for d, (h, _) in enumerate(finals))
    if name == "LSTM":
        loss = loss + sum((c * g_c[d]).sum() for d, (_, c) in enumerate(finals))
    loss.backward()
    assert_close("output", out, out_naive)
    for d, (h_steps, c_steps) in enumerate(steps):
        for t in range(6):
            assert_close(f"dL/dh[t={t}, d={d}]", grads.h[t, :, d], h_steps[t].grad)
            if name == "LSTM":
                assert_close(f"dL/dc[t={t}, d={d}]", grads.c[t, :, d], c_steps[t].grad)
            else:
                assert grads.c is None


def test_record_hooks_per_layer_and_removal():
    module = rnnkit.GRU(3, 4, num_layers=3)
    calls = []
    handle = module.register_step_grad_hook(lambda m, layer, grads: calls.append((m, layer)))
    module(torch.randn(5, 2, 3))[0].sum().backward()
    assert sorted(layer for _, layer in calls) == [0, 1, 2]
    assert all(m is module for m, _ in calls)
    handle.remove()
    calls.clear()
    module(torch.randn(5, 2, 3))[0].sum().backward()
    assert calls == []


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_storage(cell, dtype):
    """Storage in bf16/fp16, math in fp32: equal to the fp32 recurrence on the same rounded inputs."""
    P = 3 if cell == "lstm_proj" else None
    fn, args, kwargs = recurrence_inputs(cell, T=5, B=3, D=2, H=16, P=P, dtype=torch.float32)
    low = [a.to(dtype) for a in args]
    low_kw = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    high = [a.float() for a in low]
    high_kw = {k: v.float() if torch.is_tensor(v) else v for k, v in low_kw.items()}
    results = []
    for ts, kw in ((low, low_kw), (high, high_kw)):
        ts = [t.clone().requires_grad_() for t in ts]
        kw = {k: v.clone().requires_grad_() if torch.is_tensor(v) else v for k, v in kw.items()}
        outs = getattr(functional, fn)(*ts, backend="reference", **kw)
        gen = torch.Generator().manual_seed(3)
        sum((o.float() * torch.randn(o.shape, generator=gen)).sum() for o in outs).backward()
        named = {f"out{i}": o for i, o in enumerate(outs)}
        named.update({f"grad_arg{i}": t.grad for i, t in enumerate(ts)})
        named.update({f"grad_{k}": v.grad for k, v in kw.items() if torch.is_tensor(v)})
        results.append(named)
    for name, value in results[1].items():
        assert results[0][name].dtype == dtype, f"{name}: dtype {results[0][name].dtype}, expected {dtype}"
        assert_close(name, results[0][name].float(), value, dtype)


def test_inference_saves_nothing(monkeypatch):
    from rnnkit import modules, ops

    ops.backend_ops("reference")  # registered on first use
    module = rnnkit.LSTM(3, 4)
    with OpCalls("reference_lstm_fwd") as calls:
        with torch.no_grad():
            out, _ = module(torch.randn(5, 2, 3))  # torch's fused recurrence: no operator at all
        assert not out.requires_grad and not calls.args
        monkeypatch.setattr(modules, "_torch_fused", lambda *a: False)  # rnnkit's, as compiled graphs run
        with torch.no_grad():
            module(torch.randn(5, 2, 3))
        module(torch.randn(5, 2, 3))
    assert [args[-2] for args in calls.args] == [False, True]  # the training flag
    out = reference.lstm_fwd(torch.randn(3, 2, 1, 16), torch.randn(1, 16, 4), training=False)
    assert out.gates is None and out.c_steps is None


def _outputs_gradients_record(fn: str, args, kwargs, lengths) -> list[torch.Tensor]:
    # one call of functional.<fn> on fresh copies of the inputs: its outputs, the gradients of a
    # seeded random projection of them, and the per-step record
    ts = [t.detach().clone().requires_grad_() for t in args]
    kw = {k: v.detach().clone().requires_grad_() if torch.is_tensor(v) else v for k, v in kwargs.items()}
    records = []
    out = getattr(functional, fn)(*ts, lengths=lengths, backend="reference", record=records.append, **kw)
    outs = [o for o in out if torch.is_tensor(o)]
    gen = torch.Generator().manual_seed(1)
    sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs).backward()
    grads = [t.grad for t in ts] + [v.grad for v in kw.values() if torch.is_tensor(v)]
    return outs + grads + [g for g in (records[0].h, records[0].c) if g is not None]


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("lengths", [None, [3, 1, 4]], ids=["full", "lengths"])
def test_onednn_products_give_torchs_numbers(monkeypatch, cell, lengths):
    """The fp32 CPU products on oneDNN (forced for every size here) and on torch's bmm: the same
    outputs, gradients and record, both directions, with and without lengths and a projection."""
    from kernels import _onednn

    if _onednn._linear_op() is None:
        pytest.skip("this torch has no oneDNN linear operator")
    monkeypatch.setattr(_onednn, "USE_ONEDNN", True)  # the default on AMD CPUs with AVX-512
    P = 3 if cell == "lstm_proj" else None
    fn, args, kwargs = recurrence_inputs(cell, T=5, B=3, D=2, H=6, P=P, dtype=torch.float32)
    used = []
    results = []
    for floor in (0.0, float("inf")):  # every product on oneDNN, then none
        monkeypatch.setattr(_onednn, "ONEDNN_MIN_FLOP", floor)
        results.append(_outputs_gradients_record(fn, args, kwargs, lengths))
        used.append(_onednn.RowProducts(args[1].float(), 3).packed is not None)
    assert used == [True, False]
    for a, b in zip(*results, strict=True):
        assert_close(cell, a, b)


def test_onednn_linear_is_f_linear(monkeypatch):
    """The layers' input projection on oneDNN: F.linear's output and gradients (x, W, b), batched
    and batch-first views included; fp64, small products and a compiled trace take F.linear."""
    from kernels import _onednn

    if _onednn._linear_op() is None:
        pytest.skip("this torch has no oneDNN linear operator")
    monkeypatch.setattr(_onednn, "USE_ONEDNN", True)  # the default on AMD CPUs with AVX-512
    monkeypatch.setattr(_onednn, "ONEDNN_MIN_FLOP", 0.0)
    x = torch.randn(3, 5, 7).transpose(0, 1)  # a strided view, as batch_first input is
    w, b = torch.randn(9, 7), torch.randn(9)
    results = []
    for fn in (_onednn.linear, torch.nn.functional.linear):
        ts = [t.clone().requires_grad_() for t in (x, w, b)]
        out = fn(*ts)
        (out * torch.arange(out.numel()).view(out.shape)).sum().backward()
        results.append([out, *(t.grad for t in ts)])
    for a, c in zip(*results, strict=True):
        assert_close("linear", a, c)
    calls = []
    monkeypatch.setattr(_onednn._Linear, "apply", lambda *a: calls.append(a) or torch.zeros(0))
    _onednn.linear(x.double(), w.double(), b.double())
    monkeypatch.setattr(_onednn, "ONEDNN_MIN_FLOP", 8e6)
    _onednn.linear(x, w, b)
    assert not calls


@pytest.mark.parametrize("K", [1, 7])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["dense", "gate-major"])
@pytest.mark.parametrize("onednn", [False, True], ids=["mkl", "onednn"])
def test_linear_into_a_pooled_buffer_is_f_linear(monkeypatch, K, bias, layout, onednn):
    """A large fp32 CPU linear of few input features writes into a pooled buffer (an outer product for
    one input feature), with oneDNN (the default on AMD CPUs with AVX-512: its fresh output cost 12x
    at K 1) or without: F.linear's output and gradients (x, W, b), for a dense and a gate-major
    output gradient; a small one is F.linear itself."""
    from kernels import _memory, _onednn

    monkeypatch.setattr(_onednn, "USE_ONEDNN", onednn)
    floor = _onednn.ONEDNN_MIN_FLOP
    monkeypatch.setattr(_onednn, "ONEDNN_MIN_FLOP", 0.0)  # oneDNN would take any product
    calls = []  # oneDNN's products
    if _onednn._linear_op() is not None:
        linear, reorder = _onednn._linear_op()
        counted = (lambda *a: calls.append(1) or linear(*a), reorder)
        monkeypatch.setattr(_onednn, "_linear_op", lambda: counted)
    rows, N = 4096, 256  # 4 MiB of output: the pool's smallest
    assert 4 * rows * N >= _memory.MIN_BYTES
    g = torch.Generator().manual_seed(K)
    x, w, b = torch.randn(rows, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    up = torch.randn(rows, N, generator=g)
    up = up.t().contiguous().t() if layout == "gate-major" else up
    applied = []
    monkeypatch.setattr(
        _onednn._Linear, "apply", lambda *a, f=_onednn._Linear.apply: applied.append(1) or f(*a)
    )
    results = []
    for fn in (_onednn.linear, torch.nn.functional.linear):
        ts = [t.clone().requires_grad_() for t in (x, w, b)]
        before = len(calls)
        out = fn(ts[0], ts[1], ts[2] if bias else None)
        assert len(calls) == before, "the forward ran on oneDNN"
        out.backward(up)
        results.append([out, ts[0].grad, ts[1].grad] + ([ts[2].grad] if bias else []))
    assert applied == [1]
    for a, c in zip(*results, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-3)  # dW: sums of 4096 products, about 64
    monkeypatch.setattr(_onednn, "ONEDNN_MIN_FLOP", floor)
    _onednn.linear(x[:8], w, b)  # 8 KiB of output: F.linear
    assert applied == [1]


@pytest.mark.parametrize(
    ("vendor", "flags", "env", "expected"),
    [("GenuineIntel", "avx2 avx512f", None, False), ("AuthenticAMD", "avx2 avx512f", None, True),
     ("AuthenticAMD", "avx avx2 fma", None, False), ("", "", None, False),
     ("GenuineIntel", "avx512f", "1", True), ("AuthenticAMD", "avx512f", "0", False),
     ("AuthenticAMD", "avx512f", "yes", True), ("GenuineIntel", "avx512f", "yes", False)],
)  # fmt: skip
def test_onednn_is_the_default_on_amd_cpus_with_avx512(monkeypatch, vendor, flags, env, expected):
    """MKL measured faster on an Intel Xeon and on an AMD EPYC with AVX2 only, oneDNN on an AMD EPYC
    with AVX-512; RNNKIT_ONEDNN=0/1 decides (anything else is not a choice); and the choice is what
    the products take."""
    from kernels import _onednn

    monkeypatch.setattr(_onednn, "_cpu", lambda: (vendor, set(flags.split())))
    if env is None:
        monkeypatch.delenv("RNNKIT_ONEDNN", raising=False)
    else:
        monkeypatch.setenv("RNNKIT_ONEDNN", env)
    assert _onednn._default_use() is expected
    if _onednn._linear_op() is None:
        return
    monkeypatch.setattr(_onednn, "ONEDNN_MIN_FLOP", 0.0)
    monkeypatch.setattr(_onednn, "USE_ONEDNN", expected)
    assert (_onednn.RowProducts(torch.randn(1, 8, 4), 3).packed is not None) is expected


def test_cpu_reads_this_machines_vendor_and_flags():
    from kernels import _onednn

    vendor, flags = _onednn._cpu()
    assert isinstance(vendor, str) and "\n" not in vendor
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            text = f.read()
        assert vendor in text
        assert flags and all(flag in text for flag in flags)
        if "avx512f" in text.split():
            assert "avx512f" in flags


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj"])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("lengths", [None, [3, 1, 4]], ids=["full", "lengths"])
@pytest.mark.parametrize("steps_per_chunk", [1, 3])
def test_lstm_backward_in_chunks_of_steps(monkeypatch, cell, D, lengths, steps_per_chunk):
    """The LSTM backward computes its per-step factors a chunk of steps at a time (a cache-sized
    chunk): chunks of 1 and 3 of the 4 steps give the gradients and record of one whole chunk."""
    P = 3 if cell == "lstm_proj" else None
    fn, args, kwargs = recurrence_inputs(cell, D=D, P=P)
    results = []
    for elements in (2**30, steps_per_chunk * D * 3 * 2):  # one chunk, then steps_per_chunk steps
        monkeypatch.setattr(reference, "STEP_CHUNK_ELEMENTS", elements)
        results.append(_outputs_gradients_record(fn, args, kwargs, lengths))
    assert reference._chunk_steps(D * 3 * 2, 4) == steps_per_chunk
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_large_cpu_buffers_ask_for_huge_pages(monkeypatch):
    """`kernels._memory.empty`: the whole 2 MiB pages inside a large CPU buffer get MADV_HUGEPAGE
    (where Linux has transparent huge pages); small ones and other devices are plain torch.empty."""
    from kernels import _memory

    calls = []
    monkeypatch.setattr(_memory, "_madvise", lambda: lambda *a: calls.append(a) or 0)
    monkeypatch.setattr(_memory, "POOL_BYTES", 0)  # fresh buffers (the pool's are advised once, below)
    like = torch.zeros(1)
    big = _memory.empty(like, 3, 1 << 20, 3, dtype=torch.float32)  # 36 MiB
    assert big.shape == (3, 1 << 20, 3) and big.dtype == torch.float32
    ((start, length, advice),) = calls
    assert (
        advice == _memory.MADV_HUGEPAGE and start % _memory.HUGE_PAGE == 0 and length % _memory.HUGE_PAGE == 0
    )
    assert big.data_ptr() <= start and start + length <= big.data_ptr() + big.nbytes
    assert length >= big.nbytes - 2 * _memory.HUGE_PAGE
    assert _memory.empty(like, 1000).shape == (1000,) and len(calls) == 1, "small: no advice"
    assert _memory.empty(like.to(torch.float64), 2, dtype=None).dtype == torch.float64


def test_freed_large_buffers_are_recycled_never_while_in_use(monkeypatch):
    """`kernels._memory`'s pool: a large buffer whose last tensor (or view) is freed is lent again to
    the next `empty` of its size, already touched and advised once; never while any view lives; at
    most POOL_BYTES kept; `release` frees them; POOL_BYTES = 0 turns it off."""
    from kernels import _memory

    calls = []
    monkeypatch.setattr(_memory, "_madvise", lambda: lambda *a: calls.append(a) or 0)
    monkeypatch.setattr(_memory, "_pool", _memory._Pool())
    like = torch.zeros(1)
    a = _memory.empty(like, 5, 1 << 20)  # 20 MiB of float32
    a.fill_(1.0)
    ptr, view = a.data_ptr(), a[2]
    del a
    b = _memory.empty(like, 5, 1 << 20)
    assert b.data_ptr() != ptr and bool((view == 1.0).all()), "lent again while a view of it lived"
    del view
    c = _memory.empty(like, 10, 1 << 20, dtype=torch.bfloat16)  # the same bytes in another dtype
    assert c.data_ptr() == ptr and c.dtype == torch.bfloat16 and c.shape == (10, 1 << 20)
    assert len(calls) == 2, "a recycled buffer is advised once, when first mapped"
    del b, c
    assert _memory._pool.free_bytes == 2 * 20 * 2**20
    _memory.release()
    assert _memory._pool.free_bytes == 0
    monkeypatch.setattr(_memory, "POOL_BYTES", 30 * 2**20)  # room for one
    d, e = _memory.empty(like, 5, 1 << 20), _memory.empty(like, 5, 1 << 20)
    del d, e
    assert _memory._pool.free_bytes == 20 * 2**20
    monkeypatch.setattr(_memory, "POOL_BYTES", 0)
    _memory.release()
    f = _memory.empty(like, 5, 1 << 20)
    del f
    assert _memory._pool.free_bytes == 0, "POOL_BYTES = 0 keeps nothing"


def test_pool_lends_each_buffer_to_one_holder_at_a_time(monkeypatch):
    """Threads taking and freeing pooled buffers at once: each finds its own values in its buffer
    (a buffer lent twice would show another thread's)."""
    import threading

    from kernels import _memory

    monkeypatch.setattr(_memory, "_pool", _memory._Pool())
    like, errors = torch.zeros(1), []

    def work(mark):
        for _ in range(40):
            t = _memory.empty(like, 1 << 20)  # 4 MiB
            t.fill_(mark)
            t.add_(0.0)  # time for another thread to take a buffer meanwhile
            if not bool((t == mark).all()):
                errors.append(mark)
            del t

    threads = [threading.Thread(target=work, args=(float(k),)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"threads {errors} found another's values in their buffer"
    assert _memory._pool.free_bytes <= 4 * 2 * _memory.HUGE_PAGE * 2


def test_outputs_of_successive_calls_never_share_memory():
    """Outputs a caller still holds are never lent to the next call: run the LSTM twice on large
    buffers (pooled), keep the first results, and they are unchanged and apart from the second."""
    _, args, _ = recurrence_inputs("lstm", T=40, B=64, D=2, H=256, dtype=torch.float32)
    first = reference.lstm_fwd(*args)
    kept = [t.clone() for t in first]
    second = reference.lstm_fwd(*args)
    dgx = reference.lstm_bwd(second.y, None, None, args[1], None, args[3], second.gates, second.c_steps)
    for a, b, c in zip(first, kept, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.untyped_storage().data_ptr() != c.untyped_storage().data_ptr()
    assert dgx.dgx.untyped_storage().data_ptr() not in {t.untyped_storage().data_ptr() for t in first}


@pytest.mark.parametrize("K", [7, 300], ids=["dx-mkl", "dx-onednn"])
def test_gate_major_gradient_takes_onednn_for_the_weights(monkeypatch, K):
    """The reference LSTM backward's dgx lies gate-major; the input projection's backward then
    gives F.linear's gradients, with dW on oneDNN (and dx on oneDNN from GATHER_MIN_K features)."""
    from kernels import _onednn

    if _onednn._linear_op() is None:
        pytest.skip("this torch has no oneDNN linear operator")
    monkeypatch.setattr(_onednn, "USE_ONEDNN", True)  # the default on AMD CPUs with AVX-512
    monkeypatch.setattr(_onednn, "ONEDNN_MIN_FLOP", 0.0)
    _, args, _ = recurrence_inputs("lstm", T=5, B=3, D=2, H=4, dtype=torch.float32)
    fw = reference.lstm_fwd(*args)
    dgx = reference.lstm_bwd(
        torch.randn_like(fw.y), None, None, args[1], None, args[3], fw.gates, fw.c_steps
    ).dgx
    assert dgx.shape == (5, 3, 2, 16) and dgx.permute(2, 3, 0, 1).is_contiguous(), "gate-major strides"
    grad = dgx.reshape(15, 32)  # as the projection's backward receives it
    assert grad.t().is_contiguous()
    products = []
    linear_op = _onednn._linear_op()
    monkeypatch.setattr(
        _onednn, "_linear_op", lambda: (lambda *a: products.append(a) or linear_op[0](*a), linear_op[1])
    )
    x, w, b = (
        torch.randn(15, K, requires_grad=True),
        torch.randn(32, K, requires_grad=True),
        torch.randn(32, requires_grad=True),
    )
    _onednn._Linear.apply(x, w, b).backward(grad)
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    torch.nn.functional.linear(x2, w2, b2).backward(grad)
    for a, c in ((x.grad, x2.grad), (w.grad, w2.grad), (b.grad, b2.grad)):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    # the forward product, dW, and dx from GATHER_MIN_K input features
    assert len(products) == (3 if K >= _onednn.GATHER_MIN_K else 2)


def test_flush_denormals_on_the_calling_thread_and_back():
    """The reference's FTZ/DAZ block: on for the CPU inside it, the previous mode after; nothing
    elsewhere. The reference's backward runs in it: a denormal upstream gradient is read as zero."""
    from kernels.reference import flush_denormals

    y = torch.tanh(torch.randn(4, 2, 1, 3))
    tiny_dy = torch.full_like(y, 1e-39)
    assert (reference.rnn_bwd(tiny_dy, None, y, torch.randn(1, 3, 3)).dgx == 0).all()
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    assert (tiny * 1).item() != 0, "this process should not flush denormals before the test"
    with flush_denormals(torch.device("cpu")):
        assert (tiny * 1).item() == 0
        with flush_denormals(torch.device("cpu")):  # nested: stays on, and the outer block restores
            pass
        assert (tiny * 1).item() == 0
    assert (tiny * 1).item() != 0
    with flush_denormals(torch.device("meta")):
        assert (tiny * 1).item() != 0
