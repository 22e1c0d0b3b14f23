"""The fused C step of the CPU backend's LSTM (kernels/cpu/_step.c): its activations against
float64, every output and gradient against the backend's own torch-op steps, where it is taken and
where not, and the fallback where it cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kernels import cpu
from kernels.cpu import _step as _cpu_step
from kernels.cpu import recurrence

OUTPUTS = ["y", "h_n", "c_n", "gates", "c_steps", "dgx", "dh0", "dc0", "dh_steps", "dc_steps"]


def _same(name, a, b):
    # one C pass against torch's ops: the same math, rounded differently (exp, tanh about 1 ulp)
    torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6, msg=lambda m: f"{name}: {m}")


needs_compiler = pytest.mark.skipif(
    _cpu_step._compiler() is None,
    reason="no C compiler on this machine: the CPU backend steps with torch's ops",
)


@pytest.fixture
def calls(monkeypatch):
    """Counts the C step's calls, one per time step: proof that a comparison below compared two
    different paths."""
    counts = {"forward": 0, "forward_masked": 0, "backward": 0}
    lib = _cpu_step.library()
    functions = {"forward": "rnnkit_lstm_fwd_step", "forward_masked": "rnnkit_lstm_fwd_step_masked",
                 "backward": "rnnkit_lstm_bwd_step"}  # fmt: skip
    for key, name in functions.items() if lib is not None else ():
        original = getattr(lib, name)

        def counted(*args, _key=key, _original=original):
            counts[_key] += 1
            return _original(*args)

        monkeypatch.setattr(lib, name, counted)
    return counts


@needs_compiler
def test_activations_match_float64_to_a_few_ulp():
    x = torch.cat(
        [torch.linspace(-100, 100, 400_001), torch.linspace(-2, 2, 100_001), torch.tensor([0.0, 1e-30])]
    )
    s, t, e = _cpu_step.activations(x)
    xd = x.double()
    for name, got, want in [("sigmoid", s, torch.sigmoid(xd)), ("tanh", t, torch.tanh(xd))]:
        rel = ((got.double() - want).abs() / want.abs().clamp_min(1e-30)).max().item()
        torch_rel = (
            ((getattr(torch, name)(x).double() - want).abs() / want.abs().clamp_min(1e-30)).max().item()
        )
        assert rel <= 2.5e-7, (name, rel, torch_rel)  # torch's own fp32 sigmoid and tanh: 1.5e-7, 6e-8
    inside = x.abs() < 80  # exp overflows float32 past 88.7
    rel = ((e[inside].double() - xd[inside].exp()) / xd[inside].exp()).abs().max().item()
    assert rel <= 2.5e-7


@needs_compiler
def test_activations_at_special_values():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 100.0, -100.0])
    s, t, _ = _cpu_step.activations(x)
    assert s[0].isnan() and t[0].isnan()  # NaN propagates: no clamp swallows it
    assert s[1:].tolist() == pytest.approx([1.0, 0.0, 0.5, 1.0, 0.0], abs=1e-30 + 1e-37)
    assert t[1:].tolist() == [1.0, -1.0, 0.0, 1.0, -1.0]


def _lstm(T, B, D, H, *, lengths=None, states=True, record=True, training=True, dtype=torch.float32):
    # the CPU backend's forward and backward, every output as one flat list
    g = torch.Generator().manual_seed(T * 100 + B * 10 + D + H)
    gx = torch.randn(T, B, D, 4 * H, generator=g, dtype=dtype) * 2
    w = torch.randn(D, 4 * H, H, generator=g, dtype=dtype) * 0.3
    h0, c0 = (torch.randn(D, B, H, generator=g, dtype=dtype) for _ in range(2)) if states else (None, None)
    dy = torch.randn(T, B, D, H, generator=g, dtype=dtype)
    dh_n, dc_n = (torch.randn(D, B, H, generator=g, dtype=dtype) for _ in range(2))
    f = cpu.lstm_fwd(gx, w, h0, c0, None, lengths, training=training)
    if not training:
        return [f.y, f.h_n, f.c_n]
    b = cpu.lstm_bwd(dy, dh_n, dc_n, w, None, c0, f.gates, f.c_steps, lengths, record=record)
    return [*f, *b]


CASES = {
    "uni": dict(T=7, B=3, D=1, H=5),
    "bi": dict(T=7, B=3, D=2, H=5),
    "lengths-bi": dict(T=9, B=4, D=2, H=6, lengths=torch.tensor([9, 3, 1, 5])),
    "lengths-uni-zero-states-no-record": dict(
        T=9, B=4, D=1, H=6, lengths=torch.tensor([2, 9, 4, 4]), states=False, record=False
    ),
    "odd-wide": dict(T=3, B=5, D=1, H=37),  # H not a multiple of the vector width
    "tiles-bi": dict(T=5, B=19, D=2, H=5),  # the gate-major pass: whole 16 x 16 tiles and edges
    "one": dict(T=1, B=1, D=1, H=1),
}


@needs_compiler
@pytest.mark.parametrize("case", list(CASES))
def test_fused_step_equals_the_torch_op_steps(calls, case):
    """y, h_n, c_n, the saved gates and cell states, dgx, dh0, dc0 and both records."""
    fused = _lstm(**CASES[case])
    masked = "lengths" in CASES[case]
    T = CASES[case]["T"]
    assert calls == {"forward": 0 if masked else T, "forward_masked": T if masked else 0, "backward": T}
    with _cpu_step.disabled():
        ops = _lstm(**CASES[case])
    assert calls["backward"] == T  # the second run took the ops
    assert len(fused) == len(ops)
    for name, a, b in zip(OUTPUTS, fused, ops):
        assert (a is None) == (b is None), name
        if a is not None:
            _same(name, a, b)


@needs_compiler
@pytest.mark.parametrize("case", ["bi", "lengths-bi"])
@pytest.mark.parametrize("steps_per_chunk", [1, 4])
def test_fused_backward_in_chunks_writes_every_step_gate_major(monkeypatch, calls, case, steps_per_chunk):
    """The backward works in chunks of steps, and the C pass puts each chunk's δa into the
    gate-major dgx (the reverse direction back in time): the same dgx as the torch-op steps'
    transposed copies, chunk by chunk."""
    c = CASES[case]
    monkeypatch.setattr(recurrence, "STEP_CHUNK_ELEMENTS", steps_per_chunk * c["D"] * c["B"] * c["H"])
    lib, placed = _cpu_step.library(), []
    original = lib.rnnkit_gate_major
    monkeypatch.setattr(lib, "rnnkit_gate_major", lambda *a: placed.append(a[2]) or original(*a))
    fused = _lstm(**c)
    chunks = -(-c["T"] // steps_per_chunk)
    assert len(placed) == chunks * c["D"] and sum(placed) == c["T"] * c["D"]
    with _cpu_step.disabled():
        ops = _lstm(**c)
    for name, a, b in zip(OUTPUTS, fused, ops):
        if a is not None:
            _same(name, a, b)


@needs_compiler
@pytest.mark.parametrize(("B", "G"), [(1, 4), (16, 16), (19, 20), (32, 48), (37, 100)])
def test_gate_major_pass_is_a_transpose(B, G):
    """`rnnkit_gate_major` (16 x 16 tiles through a buffer, the edges element-wise): K steps of [B, G]
    into dst[q, k, b], forward in time and back (the reverse direction), nothing else written."""
    K, T = 3, 5
    src = torch.randn(K, B, G)
    lib = _cpu_step.library()
    for reverse in (False, True):
        dst = torch.full((G, T, B), float("nan"))
        t0, step = (T - 1, -B) if reverse else (1, B)
        base = dst.data_ptr() + 4 * t0 * B
        lib.rnnkit_gate_major(src.data_ptr(), base, K, B, G, B * G, T * B, step)
        want = torch.full((G, T, B), float("nan"))
        for k in range(K):
            want[:, t0 - k if reverse else t0 + k] = src[k].T
        assert torch.equal(dst.nan_to_num(7.0), want.nan_to_num(7.0))


@needs_compiler
def test_fused_step_at_inference(calls):
    """training=False keeps no per-step buffers: the step alternates two scratch rows."""
    fused = _lstm(T=6, B=2, D=2, H=4, training=False)
    with _cpu_step.disabled():
        ops = _lstm(T=6, B=2, D=2, H=4, training=False)
    assert calls["forward"] == 6
    for name, a, b in zip(OUTPUTS, fused, ops):
        _same(name, a, b)


@needs_compiler
def test_fused_step_leaves_its_inputs_alone_and_takes_strided_states(calls):
    """States given transposed or expanded (as autograd hands zero gradients) work, and the step's
    in-place updates never reach the caller's tensors."""
    T, B, D, H = 5, 3, 1, 4
    gx, w = torch.randn(T, B, D, 4 * H), torch.randn(D, 4 * H, H) * 0.3
    h0 = torch.randn(D, H, B).transpose(1, 2)  # not dense
    c0 = torch.randn(D, H, B).transpose(1, 2)
    lengths = torch.tensor([5, 2, 3])
    kept = h0.clone(), c0.clone()
    f = cpu.lstm_fwd(gx, w, h0, c0, None, lengths)
    dh_n = torch.zeros(1, 1, 1).expand(D, B, H)
    dc_n = torch.randn(D, B, H)
    dc_kept = dc_n.clone()
    b = cpu.lstm_bwd(None, dh_n, dc_n, w, None, c0, f.gates, f.c_steps, lengths)
    with _cpu_step.disabled():
        f_ops = cpu.lstm_fwd(gx, w, h0, c0, None, lengths)
        b_ops = cpu.lstm_bwd(None, dh_n, dc_n, w, None, c0, f_ops.gates, f_ops.c_steps, lengths)
    assert calls["forward_masked"] == T and calls["backward"] == T
    assert torch.equal(h0, kept[0]) and torch.equal(c0, kept[1]) and torch.equal(dc_n, dc_kept)
    for name, a, b_ in zip(OUTPUTS, [*f, *b[:3]], [*f_ops, *b_ops[:3]]):
        _same(name, a, b_)


@pytest.mark.parametrize("what", ["float64", "projection"])
def test_fused_step_is_not_taken_where_it_does_not_apply(calls, what):
    """float64 (gradcheck's dtype) and the projection step with torch's ops."""
    T, B, D, H = 4, 2, 1, 3
    if what == "float64":
        _lstm(T, B, D, H, dtype=torch.float64)
    else:
        gx, w, w_hr = torch.randn(T, B, D, 4 * H), torch.randn(D, 4 * H, 2), torch.randn(D, 2, H)
        f = cpu.lstm_fwd(gx, w, None, None, w_hr)
        cpu.lstm_bwd(torch.randn(T, B, D, 2), None, None, w, w_hr, None, f.gates, f.c_steps)
    assert calls == {"forward": 0, "forward_masked": 0, "backward": 0}


@needs_compiler
def test_a_buffer_that_is_not_dense_is_refused():
    """The C code reads [R, X] blocks by address: a strided buffer would be read out of place."""
    step = _cpu_step.lstm_step(2, 3, torch.zeros(1))  # R = 2 rows (D 1, B 2), H = 3
    gxp, gates_p = torch.zeros(1, 1, 2, 12), torch.zeros(1, 1, 2, 12)
    yp, h, c = torch.zeros(1, 1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)
    c_p = torch.zeros(1, 1, 3, 2).transpose(2, 3)  # [1, 1, 2, 3], not dense
    product = lambda h: torch.zeros(1, 2, 12)  # noqa: E731 (h @ W_hhᵀ, D 1, B 2, 4H 12)
    with pytest.raises(ValueError, match="dense buffer of 6 elements"):
        step.forward(product, gxp, h, c, None, yp, gates_p, c_p)
    step.forward(product, gxp, h, c, None, yp, gates_p, c_p.contiguous())  # dense: runs


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty cache and no loaded library; the module's state is restored afterwards."""
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))
    _cpu_step._load.cache_clear()
    yield tmp_path
    _cpu_step._load.cache_clear()


def test_without_a_compiler_the_cpu_backend_steps_with_torch_ops(monkeypatch, fresh_build, calls):
    monkeypatch.setattr(_cpu_step, "_compiler", lambda: None)
    _cpu_step._load.cache_clear()
    assert _cpu_step.library() is None
    out = _lstm(T=3, B=2, D=1, H=4)
    assert calls["forward"] == calls["backward"] == 0
    assert all(torch.isfinite(t).all() for t in out if t is not None)


@needs_compiler
def test_a_failed_compile_warns_once_and_falls_back(monkeypatch, fresh_build, tmp_path):
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(_cpu_step, "SOURCE", bad)
    with pytest.warns(RuntimeWarning, match="did not compile"):
        assert _cpu_step.library() is None
    assert _cpu_step.library() is None  # cached: no second compile, no second warning
    assert not list((tmp_path / "cpu_step").glob("*.so"))  # no partial library left behind


@needs_compiler
def test_the_build_is_cached_per_source(fresh_build):
    lib = _cpu_step.library()
    assert lib is not None
    built = list((fresh_build / "cpu_step").glob("cpu_step-*.so"))
    assert len(built) == 1
    _cpu_step._load.cache_clear()
    assert _cpu_step.library() is not None
    assert list((fresh_build / "cpu_step").glob("cpu_step-*.so")) == built  # reused, not rebuilt


def test_the_environment_switch_turns_it_off():
    code = "from kernels.cpu import _step; print(_step.library(), _step.lstm_step(1, 1))"
    env = {**os.environ, "RNNKIT_CPU_STEP": "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["None", "None"]


@needs_compiler
def test_a_read_only_cache_falls_back_to_the_temporary_directory(monkeypatch, fresh_build, tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")  # a file where the cache's folder would go: mkdir fails
    monkeypatch.setenv("RNNKIT_CACHE", str(blocked))
    monkeypatch.setattr(_cpu_step.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert _cpu_step.library() is not None
    assert list((tmp_path / "tmp").glob("rnnkit-*/cpu_step/cpu_step-*.so"))


def _gcc() -> str | None:
    cc = _cpu_step._compiler()
    if cc is None:
        return None
    done = subprocess.run([cc, "--version"], capture_output=True, text=True)
    return cc if done.returncode == 0 and "Free Software Foundation" in done.stdout else None


@pytest.mark.skipif(_gcc() is None, reason="the vectorizer's report read here is gcc's")
@pytest.mark.parametrize("target", [("-mavx2", "-mfma"), ("-mavx512f",)], ids=["avx2", "avx512"])
def test_every_elementwise_loop_vectorizes_with_the_build_flags(target, tmp_path):
    # The step's speed is its vector loops: without -fno-trapping-math gcc 12 vectorized none of them
    # for AVX2 (a forward step 18x slower on an AMD EPYC, Zen 3). Built for a target given here (not
    # -march=native), so the check holds whatever this machine's CPU; gcc's report says, for each
    # function, how many loops it vectorized.
    lines = _cpu_step.SOURCE.read_text().splitlines()
    names = ["rnnkit_activations", "rnnkit_lstm_fwd_step", "rnnkit_lstm_fwd_step_masked",
             "rnnkit_lstm_bwd_step", "rnnkit_zone_gates", "rnnkit_bernoulli"]  # fmt: skip
    starts = {text.split("(")[0].removeprefix("void "): n + 1 for n, text in enumerate(lines)}
    functions = {name: starts[name] for name in names if name in starts}
    assert len(functions) == len(names), functions
    build = [_gcc(), *_cpu_step.FLAGS, *target, str(_cpu_step.SOURCE), "-o", str(tmp_path / "step.so")]
    done = subprocess.run([*build, "-fopt-info-vec-all"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name, line in functions.items():
        at = f"{_cpu_step.SOURCE.name}:{line}:"
        report = [r for r in done.stderr.splitlines() if at in r and "loops in function" in r]
        assert report and "vectorized 0 loops" not in report[0], f"{name} ({at}): {report or 'no report'}"
