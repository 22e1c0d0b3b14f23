"""Side-by-side timing of recurrent layers: torch.nn (cuDNN / oneDNN), rnnkit-triton, rnnkit-cpu,
rnnkit-reference, a naive loop over torch.nn cells, and that loop under torch.compile (what a user
would try instead), in one run on one machine. Every number is measured here.

GPU timing: `triton.testing.do_bench` (warm-up, then the median and the 20th/80th percentiles).
CPU timing: warm-up runs, then ``repeats`` timed runs with `time.perf_counter`.

fp32 rows on a GPU run twice, like against like (`FP32_MATH`): ``tf32``, torch's defaults, where
cuDNN's RNN, and rnnkit's recurrence, which follows its flag, use TF32 (torch's matmuls, rnnkit's
input projection included, stay IEEE fp32); and ``ieee``, TF32 off for both. The CPU has no TF32.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import torch
from torch import nn

import rnnkit
from kernels.cpu import SETTINGS as CPU_SETTINGS
from rnnkit._checks import ArgumentError, check_at_least, check_device
from rnnkit.backends import TRITON_DTYPES

PROVIDERS = (
    "torch.nn", "rnnkit-triton", "rnnkit-cpu", "rnnkit-reference", "naive-cell-loop", "compiled-cell-loop",
)  # fmt: skip
# torch.compile unrolls the cell loop: compiling T·layers = 100 LSTM steps took ~90 s on a 2-core CPU
COMPILE_MAX_STEPS = 256
# fwd: inference (no gradient); fwd+bwd: a training step; fwd+bwd+record: the same with every step's
# gradient recorded (a step-gradient hook that keeps each step's norm, as the diagnostics do): rnnkit only
MODES = ("fwd", "fwd+bwd", "fwd+bwd+record")
# how fp32 rows multiply on a GPU: torch's defaults (TF32 in cuDNN's RNN) and IEEE fp32 for both sides
FP32_MATH = ("tf32", "ieee")


@dataclass(frozen=True)
class BenchRow:
    """One benchmark shape: B batch, T steps, I input, H hidden."""

    name: str
    cell: str  # "rnn" (tanh), "lstm" or "gru"
    B: int
    T: int
    I: int
    H: int
    num_layers: int = 1
    dtype: str = "float32"
    note: str = ""
    gpu_only: bool = False  # a row for the GPU's comparison only (fp16: cuDNN's persistent kernels)
    cells: bool = False  # a Python loop over each provider's cells (torch.nn's, rnnkit's) instead of a layer


DEFAULT_ROWS = (
    BenchRow("flashrnn-h768", "lstm", 16, 1024, 768, 768, dtype="bfloat16", note="FlashRNN paper, H100"),
    BenchRow("flashrnn-h768-fp16", "lstm", 16, 1024, 768, 768, dtype="float16", gpu_only=True,
             note="FlashRNN's published H100 figures are fp16 (cuDNN 2.01/5.19 ms fwd/fwd+bwd), and cuDNN's "
                  "persistent kernels are fp16-only"),
    BenchRow("pytorch-default", "lstm", 64, 100, 512, 512, note="PyTorch's own RNN benchmark default"),
    BenchRow("mnist-rowwise", "lstm", 128, 28, 28, 256, num_layers=2, note="the row-wise MNIST model"),
    BenchRow("imdb-rnn", "rnn", 100, 200, 128, 256, note="the IMDB model, RNN"),
    BenchRow("imdb-lstm", "lstm", 100, 200, 128, 256, note="the IMDB model, LSTM"),
    BenchRow("long-small-batch", "lstm", 8, 1000, 128, 128, note="small batch, long sequence"),
    BenchRow("gradflow-rnn", "rnn", 32, 500, 128, 128, note="the gradflow setting"),
    BenchRow("gradflow-lstm", "lstm", 32, 500, 128, 128, note="the gradflow setting"),
    BenchRow("gradflow-gru", "gru", 32, 500, 128, 128, note="the gradflow setting"),
    BenchRow("mnist-pixel", "lstm", 128, 784, 1, 128, note="pixel and permuted MNIST's model (issue #18)"),
    BenchRow("sine-cells", "lstm", 97, 999, 1, 51, num_layers=2, dtype="float64", cells=True,
             note="PyTorch's sine-wave example: two LSTMCells stepped in Python"),
)  # fmt: skip


@dataclass(frozen=True)
class BenchResult:
    """One (row, provider, mode): times in milliseconds; None where the provider did not run."""

    row: str
    cell: str
    shape: str
    dtype: str
    provider: str
    mode: str
    median_ms: float | None
    p20_ms: float | None
    p80_ms: float | None
    ratio_to_torch: float | None
    seq_per_s: float | None
    peak_mem_mb: float | None
    skipped: str | None = None
    first_call_s: float | None = None  # the first run alone: includes torch.compile's compilation
    fp32_math: str = "-"  # fp32 rows: "tf32" (torch's defaults on a GPU) or "ieee"; "-" for other dtypes
    us_per_step: float | None = None  # the median over T·layers steps, in µs


def kernel_rows(rows: tuple[BenchRow, ...] = DEFAULT_ROWS) -> tuple[list[BenchRow], list[BenchRow]]:
    """(the rows whose dtype the Triton kernels run, the others): float64 always runs on the
    reference (`rnnkit.backends.TRITON_DTYPES`), so no kernel of it is ever compiled."""
    runs = [r for r in rows if getattr(torch, r.dtype) in TRITON_DTYPES]
    return runs, [r for r in rows if r not in runs]


def machine() -> dict[str, str]:
    """The machine header: device, torch, triton and CUDA versions, threads, the CPU products' library,
    date (UTC)."""
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = str(torch.version.cuda)
    else:
        info["device"] = _cpu_model()
        info["threads"] = str(torch.get_num_threads())
        if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1":  # torch's huge pages (cli.py train sets it)
            info["THP_MEM_ALLOC_ENABLE"] = "1"
        # the library of the CPU backend's large fp32 products (kernels.cpu chooses by CPU):
        # their rounding, and on some CPUs their speed, differ
        info["products"] = "oneDNN" if CPU_SETTINGS.onednn else "MKL"
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


class _CellLoop(nn.Module):
    """What the seed examples do: a Python loop over cells (torch.nn's, or rnnkit's with ``backend``),
    layer by layer."""

    def __init__(
        self, cell: str, I: int, H: int, num_layers: int, backend: str | None = None, **factory
    ) -> None:
        super().__init__()
        names = {"rnn": "RNNCell", "lstm": "LSTMCell", "gru": "GRUCell"}
        cls = getattr(nn if backend is None else rnnkit, names[cell])
        extra = {} if backend is None else {"backend": backend}
        self.lstm = cell == "lstm"
        self.cells = nn.ModuleList(cls(I if i == 0 else H, H, **extra, **factory) for i in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for cell in self.cells:
            state = None
            outputs = []
            for x_t in x:
                state = cell(x_t, state)
                outputs.append(state[0] if self.lstm else state)
            x = torch.stack(outputs)
        return x


def build_model(row: BenchRow, provider: str, device: torch.device) -> nn.Module:
    """The model a provider times for a row (same sizes, the provider's own implementation)."""
    factory = {"device": device, "dtype": getattr(torch, row.dtype)}
    if row.cells:  # each provider's own cells in the same loop
        backend = None if provider == "torch.nn" else provider.removeprefix("rnnkit-")
        return _CellLoop(row.cell, row.I, row.H, row.num_layers, backend, **factory)
    if provider in ("naive-cell-loop", "compiled-cell-loop"):
        loop = _CellLoop(row.cell, row.I, row.H, row.num_layers, **factory)
        if provider == "naive-cell-loop":
            return loop
        torch._dynamo.reset()  # a fresh cache: no recompile limit, no graph of an earlier row
        return torch.compile(loop)
    name = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[row.cell]
    if provider == "torch.nn":
        return getattr(nn, name)(row.I, row.H, num_layers=row.num_layers, **factory)
    backend = provider.removeprefix("rnnkit-")
    return getattr(rnnkit, name)(row.I, row.H, num_layers=row.num_layers, backend=backend, **factory)


def _step(model: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    if mode == "fwd":

        def run() -> None:
            with torch.no_grad():
                model(x)

        return run

    params = list(model.parameters())
    x = x.detach().requires_grad_()
    if mode == "fwd+bwd+record":  # what the diagnostics keep: each step's gradient norm
        norms = []
        for layer in model.modules():
            if hasattr(layer, "register_step_grad_hook"):
                layer.register_step_grad_hook(lambda m, i, g: norms.append(g.h.norm(dim=-1)))

    def run() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()

    return run


def _time_cpu(fn: Callable[[], None], warmup: int, repeats: int) -> tuple[float, float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return statistics.median(times), q[0], q[3]


def _time_gpu(fn: Callable[[], None]) -> tuple[float, float, float]:
    from triton.testing import do_bench

    median, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    return median, p20, p80


def check_settings(
    providers: tuple[str, ...],
    modes: tuple[str, ...],
    fp32: tuple[str, ...],
    device: str,
    warmup: int,
    repeats: int,
) -> None:
    """`ArgumentError` naming the first bad setting of a benchmark run, before any timing."""
    for name, values, known in (
        ("providers", providers, PROVIDERS),
        ("modes", modes, MODES),
        ("fp32", fp32, FP32_MATH),
    ):
        for v in values:
            if v not in known:
                raise ArgumentError(name, f"expected names among {', '.join(known)}, got {v!r}")
    check_device(device, "device")
    check_at_least("warmup", warmup, 0)
    check_at_least("repeats", repeats, 1)


@contextlib.contextmanager
def fp32_math(setting: str) -> Iterator[None]:
    """Inside the block, on a GPU: ``"tf32"`` = torch's defaults (cuDNN's RNN may use TF32, matmuls
    do not), ``"ieee"`` = TF32 off for both. The previous flags come back after."""
    if setting not in FP32_MATH:
        raise ValueError(f"fp32 math: expected one of {', '.join(FP32_MATH)}, got {setting!r}")
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    previous = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32, matmul.allow_tf32 = setting == "tf32", False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = previous


def run_bench(
    rows: tuple[BenchRow, ...] = DEFAULT_ROWS,
    *,
    providers: tuple[str, ...] = PROVIDERS,
    modes: tuple[str, ...] = MODES,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
    warmup: int = 1,
    repeats: int = 5,
    compile_max_steps: int = COMPILE_MAX_STEPS,
    on_result: Callable[[BenchResult], None] | None = None,
    fp32: tuple[str, ...] = FP32_MATH,
) -> list[BenchResult]:
    """Time every (row, provider, mode) on ``device``; torch.nn first, for the ratios.

    Args:
        rows, providers, modes: what to time (see `DEFAULT_ROWS`, `PROVIDERS`, `MODES`).
        device: "cuda" or "cpu". warmup, repeats: for CPU timing (the GPU uses do_bench's own).
        compile_max_steps: the compiled cell loop runs on rows of at most this many T·layers
            steps (compiling unrolls the loop; its time is the first call's, reported apart).
        on_result: called with each result as it is measured, for progress display.
        fp32: on a GPU, the ways fp32 rows run (`FP32_MATH`), each a pass of every provider; the
            ratio compares with torch.nn in the same pass. On the CPU fp32 is IEEE.

    Returns:
        One `BenchResult` per (row, provider, mode); a provider that cannot run here (Triton
        without CUDA) gets ``skipped`` set and no times.

    Example:
        >>> run_bench(DEFAULT_ROWS[2:3], providers=("torch.nn", "rnnkit-cpu"), device="cpu")
    """
    check_settings(providers, modes, fp32, device, warmup, repeats)
    dev = torch.device(device)
    gpu = dev.type == "cuda"
    ordered = sorted(providers, key=lambda p: p != "torch.nn")
    results = []
    for row in rows:
        # fp32 on a GPU: one pass per setting of the TF32 flags; on the CPU, or another dtype, one pass
        passes = (fp32 if gpu else ("ieee",)) if row.dtype == "float32" else ("-",)
        for setting in passes:
            flags = fp32_math(setting) if gpu and setting != "-" else contextlib.nullcontext()
            with flags:
                results += _time_row(
                    row, ordered, modes, dev, warmup, repeats, compile_max_steps, on_result, setting
                )
    return results


def _time_row(
    row: BenchRow,
    ordered: list[str],
    modes: tuple[str, ...],
    dev: torch.device,
    warmup: int,
    repeats: int,
    compile_max_steps: int,
    on_result: Callable[[BenchResult], None] | None,
    setting: str,
) -> list[BenchResult]:
    # every provider and mode of one row, torch.nn first (the ratios divide by its medians)
    gpu = dev.type == "cuda"
    results = []
    torch_ms: dict[str, float] = {}
    shape = f"B{row.B} T{row.T} I{row.I} H{row.H}" + (f" L{row.num_layers}" if row.num_layers > 1 else "")
    for provider in ordered:
        for mode in modes:
            skipped = None
            steps = row.T * row.num_layers
            if provider == "rnnkit-triton" and not gpu:
                skipped = "needs CUDA"
            if provider == "rnnkit-cpu" and gpu:
                skipped = "runs CPU tensors"
            if row.gpu_only and not gpu:
                skipped = "a GPU row"
            if provider == "compiled-cell-loop" and steps > compile_max_steps:
                skipped = f"{steps} steps to unroll > {compile_max_steps}"
            if row.cells and provider in ("naive-cell-loop", "compiled-cell-loop"):
                skipped = "the row is a cell loop (torch.nn's)"
            if row.cells and provider == "rnnkit-triton" and row.dtype == "float64":
                skipped = "float64: the kernels compute in fp32"
            if mode == "fwd+bwd+record" and (row.cells or not provider.startswith("rnnkit-")):
                skipped = "no per-step record"
            if skipped is None:
                torch.manual_seed(0)
                model = build_model(row, provider, dev)
                x = torch.randn(row.T, row.B, row.I, device=dev, dtype=getattr(torch, row.dtype))
                fn = _step(model, x, mode)
                if gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                fn()
                if gpu:
                    torch.cuda.synchronize()
                first = time.perf_counter() - start
                if gpu:
                    peak = torch.cuda.max_memory_allocated() / 2**20
                    median, p20, p80 = _time_gpu(fn)
                else:
                    peak = None
                    median, p20, p80 = _time_cpu(fn, warmup, repeats)
                if provider == "torch.nn":
                    torch_ms[mode] = median
                compared = "fwd+bwd" if mode == "fwd+bwd+record" else mode  # torch.nn records nothing
                ratio = median / torch_ms[compared] if compared in torch_ms else None
                result = BenchResult(
                    row.name, row.cell, shape, row.dtype, provider, mode,
                    median, p20, p80, ratio, row.B / (median / 1e3), peak, None, first, setting,
                    median * 1e3 / steps,
                )  # fmt: skip
            else:
                result = BenchResult(
                    row.name, row.cell, shape, row.dtype, provider, mode,
                    None, None, None, None, None, None, skipped, None, setting,
                )  # fmt: skip
            results.append(result)
            if on_result:
                on_result(result)
    return results


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown_header(header: dict[str, str]) -> list[str]:
    """The first lines of a Markdown section: the machine and the date, then the versions."""
    versions = ", ".join(f"{k} {v}" for k, v in header.items() if k not in ("device", "date"))
    return [f"### {header.get('device', '?')} — {header.get('date', '')}", "", versions, ""]


FP32_NOTE = (
    "fp32 math: `tf32` = torch's defaults on a GPU (cuDNN's RNN, and rnnkit's recurrence, which follows "
    "its flag, in TF32; torch's matmuls, rnnkit's input projection among them, in IEEE fp32); `ieee` = "
    "TF32 off for both. Each ratio compares with torch.nn in the same setting."
)


def to_markdown(results: list[BenchResult], header: dict[str, str]) -> str:
    """A Markdown section: the machine header and one table row per measurement."""
    note = [FP32_NOTE, ""] if any(r.fp32_math == "tf32" for r in results) else []
    lines = [
        *markdown_header(header),
        *note,
        "| row | shape | dtype | fp32 math | provider | mode | median ms | µs/step | p20–p80 ms | × torch.nn "
        "| seq/s | peak MiB | first call s |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        spread = "-" if r.p20_ms is None else f"{r.p20_ms:.3g}–{r.p80_ms:.3g}"
        median = r.skipped if r.skipped else _fmt(r.median_ms, ".4g")
        lines.append(
            f"| {r.row} | {r.shape} | {r.dtype} | {r.fp32_math} | {r.provider} | {r.mode} | {median} | "
            f"{_fmt(r.us_per_step, '.4g')} | {spread} | "
            f"{_fmt(r.ratio_to_torch, '.2f')} | {_fmt(r.seq_per_s, '.4g')} | {_fmt(r.peak_mem_mb, '.4g')} | "
            f"{_fmt(r.first_call_s, '.3g')} |"
        )
    return "\n".join(lines) + "\n"


def markdown_report(results: list[BenchResult], header: dict[str, str], targets: list[str]) -> str:
    """A whole Markdown file: a title, the section of `to_markdown` and the targets' lines."""
    report = "# Benchmarks\n\nWritten by `python cli.py bench`.\n\n" + to_markdown(results, header)
    return report + ("\nTargets:\n\n" + "".join(f"- {line}\n" for line in targets) if targets else "")


def to_json(results: list[BenchResult], header: dict[str, str]) -> dict:
    return {"machine": header, "results": [asdict(r) for r in results]}


# the targets: (device, provider, modes, rows, the largest ratio to torch.nn). GPU (issue #14): half of
# cuDNN's time where cuDNN launches a GEMM per step, parity where it runs a persistent kernel
_LAUNCH_BOUND_ROWS = ("flashrnn-h768", "pytorch-default", "mnist-rowwise", "imdb-lstm")
_PERSISTENT_ROWS = ("flashrnn-h768-fp16", "imdb-rnn", "long-small-batch", "gradflow-rnn", "gradflow-lstm",
                    "gradflow-gru")  # fmt: skip
_CPU_ROWS = ("pytorch-default", "mnist-rowwise", "imdb-rnn", "imdb-lstm", "gradflow-rnn", "gradflow-lstm",
             "gradflow-gru", "mnist-pixel")  # fmt: skip
TARGETS = (
    ("cpu", "rnnkit-cpu", ("fwd+bwd",), _CPU_ROWS, 1.2),  # issue #16
    ("cpu", "rnnkit-cpu", ("fwd",), _CPU_ROWS, 1.5),
    ("cpu", "rnnkit-cpu", ("fwd", "fwd+bwd"), ("sine-cells",), 1.2),
    ("cuda", "rnnkit-triton", ("fwd", "fwd+bwd"), _LAUNCH_BOUND_ROWS, 0.5),
    ("cuda", "rnnkit-triton", ("fwd", "fwd+bwd"), _PERSISTENT_ROWS, 1.0),
)  # fmt: skip
RECORD_COST = 0.05  # the per-step record: at most this much added to a training step's time
NAIVE_SPEEDUP = 10  # GPU: rnnkit-triton at least this many times faster than the naive cell loop


def check_targets(results: list[BenchResult], device: str) -> list[str]:
    """One line per target measured in ``results``: met, or missed and by how much. On a GPU the fp32
    rows are judged in torch's default setting (``fp32_math == "tf32"``), where cuDNN runs as users
    get it."""
    gpu = torch.device(device).type == "cuda"
    by_key = {(r.row, r.provider, r.mode): r for r in results if not (gpu and r.fp32_math == "ieee")}
    lines = []
    for dev, provider, modes, rows, limit in TARGETS:
        if dev != torch.device(device).type:
            continue
        for row in rows:
            for mode in modes:
                r = by_key.get((row, provider, mode))
                if r is None or r.ratio_to_torch is None:
                    continue
                ratio = r.ratio_to_torch
                verdict = "met" if ratio <= limit else f"missed by {ratio / limit:.2f}×"
                what = f"{ratio:.2f}× torch.nn (target ≤ {limit}×)"
                lines.append(f"{provider} {mode} on {row}: {what}: {verdict}")
    recorded = "rnnkit-triton" if gpu else "rnnkit-cpu"
    for (row, provider, mode), r in by_key.items():
        plain = by_key.get((row, provider, "fwd+bwd"))
        if provider == recorded and mode == "fwd+bwd+record" and r.median_ms and plain and plain.median_ms:
            cost = r.median_ms / plain.median_ms - 1
            verdict = "met" if cost <= RECORD_COST else f"missed by {cost / RECORD_COST:.2f}×"
            what = f"{cost:+.1%} of fwd+bwd (target ≤ {RECORD_COST:.0%})"
            lines.append(f"{provider} per-step record on {row}: {what}: {verdict}")
    if torch.device(device).type == "cuda":
        for (row, provider, mode), r in by_key.items():
            naive = by_key.get((row, "naive-cell-loop", mode))
            if provider == "rnnkit-triton" and naive and r.median_ms and naive.median_ms:
                speedup = naive.median_ms / r.median_ms
                verdict = "met" if speedup >= NAIVE_SPEEDUP else f"missed by {NAIVE_SPEEDUP / speedup:.2f}×"
                what = f"{speedup:.1f}× faster than the cell loop (target ≥ {NAIVE_SPEEDUP}×)"
                lines.append(f"rnnkit-triton {mode} on {row}: {what}: {verdict}")
            cudnn = by_key.get((row, "torch.nn", mode))
            if (
                provider == "rnnkit-triton"
                and mode == "fwd+bwd"
                and cudnn
                and r.peak_mem_mb
                and cudnn.peak_mem_mb
            ):
                ratio = r.peak_mem_mb / cudnn.peak_mem_mb
                verdict = "met" if ratio <= 1.0 else f"missed by {ratio:.2f}×"
                what = f"{ratio:.2f}× cuDNN's (target ≤ 1×)"
                lines.append(f"rnnkit-triton peak training memory on {row}: {what}: {verdict}")
    return lines
