"""The CPU backend (`kernels.cpu`) against the reference, through the harness that tests the Triton
kernels, and its parts: the oneDNN products, the pooled buffers, the LSTM backward's chunks and
gate-major dgx, the denormal flush."""

from __future__ import annotations

import os

import pytest
import torch

from kernels import cpu, reference
from kernels.cpu import _config, recurrence
from kernels.cpu._config import SETTINGS
from rnnkit import functional
from tests._testing import assert_close, compare_outputs, make_inputs, run_backward
from tests.test_reference import CELL_NAMES, recurrence_inputs

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]
SHAPES = [(1, 1, 1), (7, 5, 51), (7, 17, 64), (63, 1, 100), (1, 17, 51)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-H{}".format(*s))
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("variant", ["plain", "state+lengths"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cpu_backend_matches_reference(cell, shape, D, variant, dtype):
    """Every output, final state, gradient and record of the CPU backend against the reference."""
    T, B, H = shape
    full = variant != "plain"
    args, kwargs, upstream = make_inputs(
        cell, T, B, D, H, with_state=full, with_lengths=full, dtype=dtype, device="cpu"
    )
    name = cell.split("_")[0]
    fwd_ref = getattr(reference, f"{name}_fwd")(*args, **kwargs)
    fwd_cpu = getattr(cpu, f"{name}_fwd")(*args, **kwargs)
    compare_outputs("fwd.", fwd_cpu, fwd_ref, dtype)
    for record in (False, True):
        ref = run_backward(reference, cell, args, kwargs, fwd_ref, upstream, record)
        ours = run_backward(cpu, cell, args, kwargs, fwd_ref, upstream, record)
        compare_outputs(f"bwd(record={record}).", ours, ref, dtype)


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj"])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("variant", ["plain", "state+lengths"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_lstm_with_zoneouts_expectation_matches_reference(cell, D, variant, dtype):
    """Cell zoneout's expectation (``zoneout=p``): every output, gradient and record against the
    reference; the inference forward (training=False, the C step's keep where it runs) too."""
    full = variant != "plain"
    args, _, upstream = make_inputs(
        cell, 7, 5, D, 51, with_state=full, with_lengths=full, dtype=dtype, device="cpu"
    )
    kwargs = {"zoneout": 0.3}
    fwd_ref = reference.lstm_fwd(*args, **kwargs)
    compare_outputs("fwd.", cpu.lstm_fwd(*args, **kwargs), fwd_ref, dtype)
    inference = cpu.lstm_fwd(*args, training=False, **kwargs)
    assert inference.gates is None and inference.c_steps is None
    for name in ("y", "h_n", "c_n"):
        assert_close(f"inference.{name}", getattr(inference, name), getattr(fwd_ref, name), dtype)
    for record in (False, True):
        ref = run_backward(reference, cell, args, kwargs, fwd_ref, upstream, record)
        ours = run_backward(cpu, cell, args, kwargs, fwd_ref, upstream, record)
        compare_outputs(f"bwd(record={record}).", ours, ref, dtype)


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("lengths", [None, [3, 1, 4]], ids=["full", "lengths"])
def test_layers_gradients_on_cpu_equal_the_references(cell, D, lengths):
    """Through the operators and autograd (weight gradients by the backend's own product): the CPU
    backend's outputs, gradients and record against the reference's, fp32."""
    P = 3 if cell == "lstm_proj" else None
    fn, args, kwargs = recurrence_inputs(cell, T=5, B=3, D=D, H=6, P=P, dtype=torch.float32)
    ours = _outputs_gradients_record(fn, args, kwargs, lengths)
    theirs = _outputs_gradients_record(fn, args, kwargs, lengths, backend="reference")
    for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert_close(f"{cell}[{k}]", a, b)


def _outputs_gradients_record(fn: str, args, kwargs, lengths, backend: str = "cpu") -> list[torch.Tensor]:
    # one call of functional.<fn> on fresh copies of the inputs: its outputs, the gradients of a
    # seeded random projection of them, and the per-step record
    ts = [t.detach().clone().requires_grad_() for t in args]
    kw = {k: v.detach().clone().requires_grad_() if torch.is_tensor(v) else v for k, v in kwargs.items()}
    records = []
    out = getattr(functional, fn)(*ts, lengths=lengths, backend=backend, record=records.append, **kw)
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
    from kernels.cpu import _onednn

    if _onednn._linear_op() is None:
        pytest.skip("this torch has no oneDNN linear operator")
    monkeypatch.setattr(SETTINGS, "onednn", True)  # the default on AMD CPUs with AVX-512
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
    from kernels.cpu import _onednn

    if _onednn._linear_op() is None:
        pytest.skip("this torch has no oneDNN linear operator")
    monkeypatch.setattr(SETTINGS, "onednn", True)  # the default on AMD CPUs with AVX-512
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
    from kernels.cpu import _memory, _onednn

    monkeypatch.setattr(SETTINGS, "onednn", onednn)
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
    from kernels.cpu import _onednn

    monkeypatch.setattr(_config, "_cpu", lambda: (vendor, set(flags.split())))
    if env is None:
        monkeypatch.delenv("RNNKIT_ONEDNN", raising=False)
    else:
        monkeypatch.setenv("RNNKIT_ONEDNN", env)
    assert _config.default_onednn() is expected
    if _onednn._linear_op() is None:
        return
    monkeypatch.setattr(_onednn, "ONEDNN_MIN_FLOP", 0.0)
    monkeypatch.setattr(SETTINGS, "onednn", expected)
    assert (_onednn.RowProducts(torch.randn(1, 8, 4), 3).packed is not None) is expected


def test_cpu_reads_this_machines_vendor_and_flags():
    vendor, flags = _config._cpu()
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
        monkeypatch.setattr(recurrence, "STEP_CHUNK_ELEMENTS", elements)
        results.append(_outputs_gradients_record(fn, args, kwargs, lengths))
    assert recurrence._chunk_steps(D * 3 * 2, 4) == steps_per_chunk
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_large_cpu_buffers_ask_for_huge_pages(monkeypatch):
    """`kernels.cpu._memory.empty`: the whole 2 MiB pages inside a large CPU buffer get MADV_HUGEPAGE
    (where Linux has transparent huge pages); small ones and other devices are plain torch.empty."""
    from kernels.cpu import _memory

    calls = []
    monkeypatch.setattr(_memory, "_madvise", lambda: lambda *a: calls.append(a) or 0)
    monkeypatch.setattr(SETTINGS, "pool_bytes", 0)  # fresh buffers (the pool's are advised once, below)
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
    """`kernels.cpu._memory`'s pool: a large buffer whose last tensor (or view) is freed is lent again to
    the next `empty` of its size, already touched and advised once; never while any view lives; at
    most SETTINGS.pool_bytes kept; `release` frees them; SETTINGS.pool_bytes = 0 turns it off."""
    from kernels.cpu import _memory

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
    monkeypatch.setattr(SETTINGS, "pool_bytes", 30 * 2**20)  # room for one
    d, e = _memory.empty(like, 5, 1 << 20), _memory.empty(like, 5, 1 << 20)
    del d, e
    assert _memory._pool.free_bytes == 20 * 2**20
    monkeypatch.setattr(SETTINGS, "pool_bytes", 0)
    _memory.release()
    f = _memory.empty(like, 5, 1 << 20)
    del f
    assert _memory._pool.free_bytes == 0, "SETTINGS.pool_bytes = 0 keeps nothing"


def test_pool_lends_each_buffer_to_one_holder_at_a_time(monkeypatch):
    """Threads taking and freeing pooled buffers at once: each finds its own values in its buffer
    (a buffer lent twice would show another thread's)."""
    import threading

    from kernels.cpu import _memory

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
    first = cpu.lstm_fwd(*args)
    kept = [t.clone() for t in first]
    second = cpu.lstm_fwd(*args)
    dgx = cpu.lstm_bwd(second.y, None, None, args[1], None, args[3], second.gates, second.c_steps)
    for a, b, c in zip(first, kept, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.untyped_storage().data_ptr() != c.untyped_storage().data_ptr()
    assert dgx.dgx.untyped_storage().data_ptr() not in {t.untyped_storage().data_ptr() for t in first}


@pytest.mark.parametrize("K", [7, 300], ids=["dx-mkl", "dx-onednn"])
def test_gate_major_gradient_takes_onednn_for_the_weights(monkeypatch, K):
    """The CPU LSTM backward's dgx lies gate-major; the input projection's backward then
    gives F.linear's gradients, with dW on oneDNN (and dx on oneDNN from GATHER_MIN_K features)."""
    from kernels.cpu import _onednn

    if _onednn._linear_op() is None:
        pytest.skip("this torch has no oneDNN linear operator")
    monkeypatch.setattr(SETTINGS, "onednn", True)  # the default on AMD CPUs with AVX-512
    monkeypatch.setattr(_onednn, "ONEDNN_MIN_FLOP", 0.0)
    _, args, _ = recurrence_inputs("lstm", T=5, B=3, D=2, H=4, dtype=torch.float32)
    fw = cpu.lstm_fwd(*args)
    dgx = cpu.lstm_bwd(torch.randn_like(fw.y), None, None, args[1], None, args[3], fw.gates, fw.c_steps).dgx
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
    """The CPU backend's FTZ/DAZ block: on for the CPU inside it, the previous mode after; nothing
    elsewhere. Its backward runs in it: a denormal upstream gradient is read as zero."""
    from kernels.cpu.recurrence import flush_denormals

    y = torch.tanh(torch.randn(4, 2, 1, 3))
    tiny_dy = torch.full_like(y, 1e-39)
    assert (cpu.rnn_bwd(tiny_dy, None, y, torch.randn(1, 3, 3)).dgx == 0).all()
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
