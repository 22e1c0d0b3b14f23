"""How rnnkit layers work with the rest of PyTorch: custom operators, torch.compile, torch.export,
autocast, eval-mode backward and Captum, determinism, activation checkpointing and memory."""

from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import rnnkit
from rnnkit import ops
from tests._testing import assert_close

LAYERS = ["RNN", "LSTM", "GRU"]
KINDS = ["rnn_fwd", "rnn_bwd", "lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd"]
# where the layers run: the reference on the CPU (CI), the Triton kernels on a GPU
PLACES = [
    pytest.param(("cpu", "reference"), id="cpu-reference"),
    pytest.param(("cuda", "triton"), id="cuda-triton", marks=pytest.mark.cuda),
]


class Classifier(nn.Module):
    """A stacked, bidirectional rnnkit layer with a linear head, over padded batches."""

    def __init__(self, name: str, backend: str = "auto", vocab: int | None = None, batch_first=False):
        super().__init__()
        self.embed = None if vocab is None else nn.Embedding(vocab, 4)
        self.rnn = getattr(rnnkit, name)(
            4, 6, num_layers=2, bidirectional=True, batch_first=batch_first, backend=backend
        )
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x)
        y, _ = self.rnn(x, lengths=lengths)
        return self.head(y.sum(dim=1 if self.rnn.batch_first else 0))


def _loss_and_grads(model: nn.Module, x, lengths, target, run=None):
    # run: what computes the forward (a compiled model), model's parameters by default
    model.zero_grad()
    loss = nn.functional.cross_entropy((model if run is None else run)(x, lengths), target)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _rnnkit_ops_in(graph: torch.fx.Graph) -> list[str]:
    return [str(n.target) for n in graph.nodes if n.op == "call_function" and "rnnkit" in str(n.target)]


# --- custom operators ----------------------------------------------------------------------------


def _op_arguments(kind: str, lengths: bool, training: bool = True, device: str = "cpu", H: int = 4) -> tuple:
    # small, odd shapes, both directions; forward inputs require grad when the op is differentiated
    T, B, D = 5, 3, 2
    g = kind.endswith("fwd") and training

    def r(*shape):
        return torch.randn(*shape, device=device, requires_grad=g)

    lens = torch.tensor([5, 1, 3], device=device) if lengths else None
    reference = ops.backend_ops("reference")
    if kind == "rnn_fwd":
        return r(T, B, D, H), r(D, H, H), r(D, B, H), lens, "tanh", training, "ieee"
    if kind == "lstm_fwd":
        zoneout = 0.3  # cell zoneout's expectation: the LSTM's one float argument
        return (
            r(T, B, D, 4 * H),
            r(D, 4 * H, 3),
            r(D, B, 3),
            r(D, B, H),
            r(D, 3, H),
            lens,
            training,
            zoneout,
            "ieee",
        )
    if kind == "gru_fwd":
        return r(T, B, D, 3 * H), r(D, 3 * H, H), r(D, H), r(D, B, H), lens, training, "ieee"
    with torch.no_grad():
        forward = _op_arguments(kind.replace("bwd", "fwd"), lengths, device=device, H=H)
        forward = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in forward)
        out = getattr(reference, kind.replace("bwd", "fwd"))(*forward)
    r = functools.partial(torch.randn, device=device)
    if kind == "rnn_bwd":
        return r(T, B, D, H), r(D, B, H), out[0], forward[1], lens, "tanh", True, "ieee"
    if kind == "lstm_bwd":
        _, w_hh, _, c0, w_hr, *_ = forward
        return (
            r(T, B, D, 3),
            None,
            r(D, B, H),
            w_hh,
            w_hr,
            c0,
            out[3],
            out[4],
            lens,
            True,
            forward[-2],
            "ieee",
        )
    _, w_hh, _, h0, *_ = forward
    return None, r(D, B, H), w_hh, h0, out[0], out[2], out[3], lens, True, "ieee"


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("kind", KINDS)
def test_reference_ops_pass_opcheck(kind, lengths):
    """torch.library.opcheck: schema, fake (meta) implementation, registered autograd, and
    AOTAutograd's tracing of forward and backward against eager."""
    op = getattr(ops.backend_ops("reference"), kind)
    result = torch.library.opcheck(op, _op_arguments(kind, lengths))
    assert set(result.values()) == {"SUCCESS"}, result
    if kind.endswith("fwd"):  # inference: nothing saved, nothing to differentiate
        result = torch.library.opcheck(op, _op_arguments(kind, lengths, training=False))
        assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_triton_ops_pass_opcheck_on_gpu(kind):
    op = getattr(ops.backend_ops("triton"), kind)
    result = torch.library.opcheck(op, _op_arguments(kind, True, device="cuda"))
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.interpreter
@pytest.mark.parametrize("kind", KINDS)
def test_triton_ops_schema_and_autograd_registration(kind):
    # the fake-tensor checks need compiled kernels: they run in the cuda tests and, traced without
    # a GPU, in test_triton_ops_trace_into_their_kernels. The kernels run where the test does: the
    # interpreter on the CPU, natively on a GPU (which cannot read CPU tensors)
    op = getattr(ops.backend_ops("triton"), kind)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = torch.library.opcheck(
        op,
        _op_arguments(kind, True, device=device),
        test_utils=("test_schema", "test_autograd_registration"),
    )
    assert set(result.values()) == {"SUCCESS"}, result


# Run in a fresh process where Triton compiles rather than interprets; without a GPU a stand-in driver
# names the sm_90 target, which is all torch's TTIR analysis of a kernel's writes asks of it
_COMPILED_TRITON_PRELUDE = """
import torch, triton
from triton.backends.compiler import GPUTarget

class Sm90:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

if not torch.cuda.is_available():
    triton.runtime.driver.set_active(Sm90())
"""


def _run_compiled_triton(script: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when it is unset
    done = subprocess.run(
        [sys.executable, "-c", _COMPILED_TRITON_PRELUDE + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_triton_ops_trace_into_their_kernels():
    """For torch.compile, a Triton op is its launcher: allocations and one wrap_triton kernel call,
    traced with fake tensors; triton_op found the kernel each op launches (torch keys its compile
    cache on the kernel's source); and the kernel writes only buffers its launcher allocated. torch
    reads a kernel's writes off its TTIR and copies every graph input it finds written, on every
    call; under dynamic shapes torch 2.11's inductor then failed on those copies in the backward
    graph (the lengths, taken for written when a helper loaded them). Captured before anything runs."""
    script = """
        from torch._dynamo.backends.common import aot_autograd
        from torch._library.triton import get_triton_kernels_for_op
        from rnnkit import ops
        from tests.test_ecosystem import KINDS, _op_arguments

        class Captured(Exception):
            pass

        from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

        for kind in KINDS:
            for H in (4, 40):  # the resident and the split path
                graphs = []

                def capture(gm, example_inputs):
                    graphs.append(gm.graph)
                    raise Captured

                op = getattr(ops.backend_ops("triton"), kind)
                args = _op_arguments(kind, True, H=H)
                args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
                try:
                    compiler = aot_autograd(fw_compiler=capture)
                    torch.compile(op, backend=compiler, fullgraph=True, dynamic=True)(*args)
                except Exception as err:
                    if not isinstance(getattr(err, "inner_exception", None), Captured):
                        raise
                launches = [n for n in graphs[0].nodes if "triton_kernel_wrapper" in str(n.target)]
                kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]) for n in launches]
                launched = [k.fn.__name__ for k in kernels]
                written_inputs = sorted(
                    name for n in launches for name in n.kwargs["tensors_to_clone"]
                    if n.kwargs["kwargs"][name].op == "placeholder"
                )
                found = [k.fn.__name__ for k in get_triton_kernels_for_op(f"rnnkit::triton_{kind}")]
                print(kind, H, ",".join(launched), ",".join(written_inputs) or "-", *found)
        """
    seen = {}
    for line in _run_compiled_triton(script).splitlines():
        kind, H, launched, written_inputs, *found = line.split()
        seen[kind, int(H)] = (launched, written_inputs, set(found))
    # one launch each, writing no input; the operator finds every kernel it may run
    expected = {}
    for kind in KINDS:
        p = kind[-3:]
        every = {f"_streamed_{p}_kernel", f"_resident_{p}_kernel", f"_split_{p}_kernel"}
        small = f"_split_{p}_kernel" if kind.startswith("lstm") else f"_resident_{p}_kernel"
        expected[kind, 4] = (small, "-", every)  # the LSTM here has a projection: never resident
        expected[kind, 40] = (f"_split_{p}_kernel", "-", every)
    assert seen == expected


def test_triton_ops_export_with_a_dynamic_batch():
    """The launch settings read a symbolic batch through its hint: exporting a Triton op with a
    dynamic batch puts no guard on it (a block size picked from B once specialized it to 16)."""
    script = """
        from rnnkit import ops

        class Layer(torch.nn.Module):
            def __init__(self, kind, H):
                super().__init__()
                self.kind, self.G = kind, {"rnn_fwd": 1, "lstm_fwd": 4, "gru_fwd": 3}[kind]
                self.w_hh = torch.nn.Parameter(torch.randn(2, self.G * H, H))

            def forward(self, gx, lengths):
                op = getattr(ops.backend_ops("triton"), self.kind)
                states = {"rnn_fwd": (None,), "lstm_fwd": (None, None, None), "gru_fwd": (None, None)}
                middle = (lengths, "tanh") if self.kind == "rnn_fwd" else (lengths,)
                options = (False, 0.0, "ieee") if self.kind == "lstm_fwd" else (False, "ieee")
                return op(gx, self.w_hh, *states[self.kind], *middle, *options)[0]

        for kind in ("rnn_fwd", "lstm_fwd", "gru_fwd"):
            for H in (8, 40):  # the resident and the streamed path
                layer = Layer(kind, H)
                gx, lengths = torch.randn(6, 3, 2, layer.G * H), torch.tensor([6, 2, 4])
                batch = torch.export.Dim("batch", min=2)
                program = torch.export.export(layer, (gx, lengths), dynamic_shapes=({1: batch}, {0: batch}))
                print(kind, H, *[str(n.target) for n in program.graph.nodes if "rnnkit" in str(n.target)])
        """
    lines = _run_compiled_triton(script).splitlines()
    kinds = ("rnn_fwd", "lstm_fwd", "gru_fwd")
    assert lines == [f"{kind} {H} rnnkit.triton_{kind}.default" for kind in kinds for H in (8, 40)]


def test_inference_op_refuses_backward():
    *inputs, _, zoneout, precision = _op_arguments("lstm_fwd", False)  # inputs that require grad
    y = ops.backend_ops("reference").lstm_fwd(*inputs, False, zoneout, precision)[0]  # training=False
    with pytest.raises(RuntimeError, match="lstm_fwd: called with training=False"):
        y.sum().backward()


# --- torch.compile ---------------------------------------------------------------------------------


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name", LAYERS)
def test_compile_fullgraph_matches_eager(name, place):
    """A stacked, bidirectional layer with a head and a loss compiles (inductor) into one graph
    with no break, one opaque op per layer, and gives eager's loss and gradients; a second
    shape recompiles and still matches."""
    device, backend = place
    torch._dynamo.reset()
    model = Classifier(name, backend).to(device)
    t = functools.partial(torch.tensor, device=device)
    first = torch.randn(7, 3, 4, device=device), t([7, 2, 5]), t([0, 2, 1])

    explained = torch._dynamo.explain(model)(*first[:2])
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    assert _rnnkit_ops_in(explained.graphs[0].graph) == [f"rnnkit.{backend}_{name.lower()}_fwd.default"] * 2

    compiled = torch.compile(model, fullgraph=True)
    for x, lengths, target in [first, (torch.randn(9, 2, 4, device=device), t([4, 9]), t([1, 1]))]:
        loss, grads = _loss_and_grads(model, x, lengths, target, run=compiled)
        loss_eager, grads_eager = _loss_and_grads(model, x, lengths, target)
        assert_close("loss", loss, loss_eager, torch.float32)
        for key, grad in grads_eager.items():
            assert_close(f"grad of {key}", grads[key], grad, torch.float32)


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_compile_fullgraph(name):
    """A Python loop over an rnnkit cell compiles into one graph (AOTAutograd, no inductor: the
    point is the capture) with eager's outputs and gradients."""
    torch._dynamo.reset()
    cell = getattr(rnnkit, name)(3, 5)

    def run(x: torch.Tensor) -> torch.Tensor:
        state = None
        for x_t in x:
            state = cell(x_t, state)
        return (state[0] if name == "LSTMCell" else state).square().sum()

    x = torch.randn(4, 2, 3)
    explained = torch._dynamo.explain(run)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    results = []
    for fn in (run, torch.compile(run, fullgraph=True, backend="aot_eager")):
        cell.zero_grad()
        loss = fn(x)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in cell.parameters()]))
    assert_close("loss", results[1][0], results[0][0], torch.float32)
    for i, (got, want) in enumerate(zip(results[1][1], results[0][1], strict=True)):
        assert_close(f"grad of parameter {i}", got, want, torch.float32)


def test_step_grad_hook_under_compile_is_a_clear_error():
    torch._dynamo.reset()
    model = rnnkit.GRU(3, 4)
    model.register_step_grad_hook(lambda *args: None)
    with pytest.raises(Exception, match="register_step_grad_hook: the per-step gradient record"):
        torch.compile(model, fullgraph=True)(torch.randn(5, 2, 3))


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_step_grad_hook_under_plain_compile_runs_the_layer_eagerly(name):
    """Without fullgraph, torch.compile runs a layer whose hook would be called eagerly (its
    fallback past the error): the hook sees what it sees without compile, never silence."""
    records = []
    for compiled in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = getattr(rnnkit, name)(3, 4, num_layers=2)
        model.register_step_grad_hook(lambda m, layer, g, c=compiled: records.append((c, layer, g.h.clone())))
        run = torch.compile(model) if compiled else model
        x = torch.randn(5, 2, 3, requires_grad=True)
        run(x)[0].sum().backward()
    eager = [(layer, h) for c, layer, h in records if not c]
    compiled = [(layer, h) for c, layer, h in records if c]
    assert [layer for layer, _ in compiled] == [layer for layer, _ in eager] == [1, 0]
    for (layer, got), (_, want) in zip(compiled, eager, strict=True):
        assert_close(f"layer {layer}'s dL/dh", got, want, torch.float32)


# --- torch.jit.trace -------------------------------------------------------------------------------


TRACED = [("RNN", {}), ("LSTM", {"proj_size": 2}), ("GRU", {"bidirectional": True, "num_layers": 2}),
          ("RNNCell", {}), ("LSTMCell", {}), ("GRUCell", {})]  # fmt: skip


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name, kw", TRACED, ids=[t[0] for t in TRACED])
def test_jit_trace_passes_its_check_and_gives_eagers_numbers(name, kw):
    """torch.jit.trace of every layer and cell passes trace's own check (one graph whatever the grad
    mode: the trace holds rnnkit's operators, keeping what backward needs); the traced module, saved
    and loaded, gives the eager outputs and input gradients on a new input of the same shape."""
    torch.manual_seed(0)
    module = getattr(rnnkit, name)(3, 4, **kw)
    shape = (2, 3) if name.endswith("Cell") else (5, 2, 3)
    traced = torch.jit.trace(module, torch.randn(shape))  # check_trace=True: two runs, one graph
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(shape, requires_grad=True)
    for run in (traced, loaded):
        got, want = torch.utils._pytree.tree_leaves(run(x))[0], torch.utils._pytree.tree_leaves(module(x))[0]
        assert_close(f"{name} output", got, want, torch.float32)
        g_got, g_want = (torch.autograd.grad(y.sum(), x)[0] for y in (got, want))
        assert_close(f"{name} input gradient", g_got, g_want, torch.float32)


def test_a_hook_is_never_silently_left_out_of_a_graph():
    """A registered step-gradient hook cannot be part of a traced or exported graph: both say so."""
    model = rnnkit.LSTM(3, 4)
    model.register_step_grad_hook(lambda *args: None)
    x = torch.randn(5, 2, 3)
    with pytest.raises(RuntimeError, match=r"register_step_grad_hook: .* a compiled or traced graph cannot"):
        torch.jit.trace(model, x)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="register_step_grad_hook: the per-step gradient record"):
        torch.export.export(model, (x,))


# --- torch.export ----------------------------------------------------------------------------------


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name", LAYERS)
def test_export_round_trip(name, place):
    """torch.export with dynamic batch and length, saved and loaded: runs and matches eager on
    other shapes; bad lengths still get their error at run time."""
    device, backend = place
    model = Classifier(name, backend).to(device).eval()
    t = functools.partial(torch.tensor, device=device)
    x, lengths = torch.randn(6, 3, 4, device=device), t([6, 2, 4])
    steps, batch = torch.export.Dim("steps", min=2), torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (x, lengths), dynamic_shapes=({0: steps, 1: batch}, {0: batch}))
    assert _rnnkit_ops_in(program.graph) == [f"rnnkit.{backend}_{name.lower()}_fwd.default"] * 2
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    x2, lengths2 = torch.randn(11, 5, 4, device=device), t([11, 3, 1, 8, 6])
    with torch.no_grad():
        assert_close("exported", loaded(x2, lengths2), model(x2, lengths2), torch.float32)
    with pytest.raises(ValueError, match="lengths: every length must be at most the number of steps T = 11"):
        loaded(x2, t([11, 3, 1, 8, 12]))


@pytest.mark.parametrize("name", LAYERS)
def test_cpu_autocast_bf16_like_torch_nn(name):
    """Every rnnkit layer computes in the autocast dtype (torch.nn's CPU GRU stays in float32
    there, its RNN and LSTM do not); the values agree to bf16's tolerance."""
    ours = getattr(rnnkit, name)(4, 16, num_layers=2, bidirectional=True)
    theirs = getattr(nn, name)(4, 16, num_layers=2, bidirectional=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(6, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = ours(x)
        try:
            out_t, state_t = theirs(x)
            theirs_ran = True
        except RuntimeError as e:
            # torch.nn's LSTM goes to oneDNN's bf16 LSTM, which a CPU without AVX-512 does not have
            # ("could not create a primitive descriptor", an AMD EPYC with AVX2): rnnkit's layer runs
            # there, and is checked against torch.nn's float32 result instead
            if name != "LSTM" or "could not create a primitive descriptor" not in str(e):
                raise
            theirs_ran = False
    if not theirs_ran:
        out_t, state_t = theirs(x)
    h, h_t = (state[0], state_t[0]) if name == "LSTM" else (state, state_t)
    assert out.dtype == h.dtype == torch.bfloat16
    if name != "GRU" and theirs_ran:
        assert out_t.dtype == h_t.dtype == torch.bfloat16
    assert_close("output", out.float(), out_t.float(), torch.bfloat16)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", LAYERS)
def test_cuda_autocast_like_torch_nn(name, dtype):
    """Under CUDA autocast the Triton layers compute in its dtype (fp32 math inside). cuDNN's RNN
    differs for bf16: its autocast path casts to half whatever dtype autocast asks for, so torch.nn
    returns float16 where rnnkit returns the bfloat16 asked for (said in the README). Both are
    checked against torch.nn in fp32, to the autocast dtype's tolerance."""
    ours = getattr(rnnkit, name)(4, 16, num_layers=2, bidirectional=True, backend="triton").cuda()
    theirs = getattr(nn, name)(4, 16, num_layers=2, bidirectional=True).cuda()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(6, 3, 4, device="cuda")
    with torch.no_grad():
        exact, _ = theirs(x)
    with torch.autocast("cuda", dtype=dtype):
        out, _ = ours(x)
        out_t, _ = theirs(x)
    assert out.dtype == dtype
    assert out_t.dtype == torch.float16  # cuDNN's autocast, whatever the dtype
    assert_close("rnnkit under autocast", out.float(), exact, dtype)
    assert_close("torch.nn under autocast", out_t.float(), exact, torch.float16)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


def test_cpu_autocast_cell():
    cell = rnnkit.GRUCell(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = cell(torch.randn(3, 4))
    assert h.dtype == torch.bfloat16


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name", LAYERS)
def test_backward_in_eval_mode(name, place):
    """cuDNN refuses backward in eval mode; rnnkit computes it (attribution tools need it), and
    it is the training-mode gradient without dropout."""
    device, backend = place
    model = getattr(rnnkit, name)(3, 5, num_layers=2, dropout=0.5, backend=backend).to(device).eval()
    x = torch.randn(4, 2, 3, device=device, requires_grad=True)
    model(x)[0].sum().backward()
    in_eval = x.grad.clone()
    model.train().dropout = 0.0
    x.grad = None
    model(x)[0].sum().backward()
    assert_close("grad of the input, eval vs train without dropout", in_eval, x.grad, torch.float32)


@pytest.mark.parametrize("place", PLACES)
def test_captum_integrated_gradients_complete_in_eval_mode(place):
    """Integrated Gradients on a small text classifier (embedding, bidirectional rnnkit.LSTM,
    head) in eval mode: the attributions of each input add up to F(x) - F(baseline)."""
    attr = pytest.importorskip("captum.attr")  # a test-only dependency (".[test]" installs it)
    device, backend = place
    model = Classifier("LSTM", backend, vocab=30, batch_first=True).to(device).eval()  # batch first: captum's
    tokens = torch.randint(1, 30, (4, 9), device=device)  # [B, T]
    baseline = torch.zeros_like(tokens)  # token 0 everywhere
    ig = attr.LayerIntegratedGradients(model, model.embed)
    attributions = ig.attribute(tokens, baselines=baseline, target=2, n_steps=64)  # [B, T, 4]
    with torch.no_grad():
        gap = model(tokens)[:, 2] - model(baseline)[:, 2]
    assert gap.abs().min() > 1e-3  # something to attribute
    assert_close("sum of attributions", attributions.sum(dim=(1, 2)), gap, torch.float32)


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name", LAYERS)
def test_gradients_are_bitwise_repeatable(name, place):
    device, backend = place
    model = getattr(rnnkit, name)(5, 7, num_layers=2, bidirectional=True, backend=backend).to(device)
    x = torch.randn(9, 4, 5, device=device)
    grads = []
    for _ in range(2):
        model.zero_grad()
        model(x, lengths=torch.tensor([9, 3, 6, 1], device=device))[0].square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_activation_checkpointing_gives_the_same_gradients():
    model = rnnkit.LSTM(3, 6, num_layers=2)
    x = torch.randn(5, 2, 3)
    model(x)[0].sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    checkpoint(lambda inp: model(inp)[0], x, use_reentrant=False).sum().backward()
    for name_p, got, want in zip(
        (n for n, _ in model.named_parameters()), (p.grad for p in model.parameters()), expected
    ):
        assert_close(name_p, got, want, torch.float32)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize(("name", "per_direction"), [("RNN", 1), ("LSTM", 6), ("GRU", 5)])
def test_memory_kept_for_backward(name, per_direction, bidirectional):
    """What the README says a layer keeps for backward, per step and sequence: its input (for the
    input projection's weight gradient) and, per direction, H values for the RNN (its output), 6·H
    for the LSTM (output, four gates, cell state), 5·H for the GRU (output, three gates, W_hn h +
    b_hn), in the storage dtype. Counted with saved-tensor hooks, as the difference of two lengths."""
    I, H, B = 3, 8, 2
    layer = getattr(rnnkit, name)(I, H, bidirectional=bidirectional)

    def saved_bytes(T: int) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(torch.randn(T, B, I))
        return total

    values_per_step = (saved_bytes(20) - saved_bytes(10)) / 10 / B / 4  # float32
    directions = 2 if bidirectional else 1
    assert values_per_step == I + directions * per_direction * H


def test_double_backward_without_the_input_is_refused_clearly():
    """A double backward runs the forward again from gx, which the op does not keep: through
    `rnnkit.functional` without ``recompute_gx`` it stops with a message that says what to pass (the
    layers pass it); the backward operator itself has no derivative and says so."""
    gx = torch.randn(5, 2, 1, 16, requires_grad=True)
    w_hh = torch.randn(1, 16, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"lstm: a double backward .* recompute_gx="):
        torch.autograd.grad(rnnkit.functional.lstm(gx, w_hh)[0].sum(), gx, create_graph=True)
    torch.autograd.grad(rnnkit.functional.lstm(gx, w_hh)[0].sum(), gx)  # a first-order one: as always
    y = rnnkit.functional.lstm(gx, w_hh, recompute_gx=lambda: gx)[0]
    (grad,) = torch.autograd.grad(y.sum(), gx, create_graph=True)
    grad.pow(2).sum().backward()  # through the forward made again: no error
    assert w_hh.grad is not None
    ops = rnnkit.ops.backend_ops("reference")
    fwd = ops.lstm_fwd(gx.detach(), w_hh.detach(), None, None, None, None, True, 0.0, "ieee")
    dy = torch.randn(5, 2, 1, 4, requires_grad=True)
    out = ops.lstm_bwd(dy, None, None, w_hh.detach(), None, None, fwd[3], fwd[4], None, False, 0.0, "ieee")
    with pytest.raises(RuntimeError, match=r"rnnkit\.reference_lstm_bwd has no derivative of its own"):
        out[0].sum().backward()
