"""The benchmark harness runs and reports its fields (tiny shapes, CPU); no test asserts a speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnkit import bench
from tests._testing import tf32_flags

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    bench.BenchRow("tiny-lstm", "lstm", 2, 3, 4, 5),
    bench.BenchRow("tiny-gru", "gru", 3, 2, 4, 6, num_layers=2),
)


EAGER = tuple(p for p in bench.PROVIDERS if p != "compiled-cell-loop")


def test_run_bench_fields_and_ratios():
    results = bench.run_bench(TINY, providers=EAGER, device="cpu", warmup=0, repeats=2)
    assert len(results) == len(TINY) * len(EAGER) * len(bench.MODES)
    for r in results:
        if r.mode == "fwd+bwd+record" and not r.provider.startswith("rnnkit-"):
            assert r.skipped == "no per-step record" and r.median_ms is None
            continue
        if r.provider == "rnnkit-triton":
            assert r.skipped == "needs CUDA" and r.median_ms is None
            continue
        assert r.skipped is None
        assert r.median_ms > 0 and r.p20_ms <= r.p80_ms
        assert r.seq_per_s > 0 and r.ratio_to_torch > 0 and r.first_call_s > 0
        if r.provider == "torch.nn":
            assert r.ratio_to_torch == 1.0
    assert {r.fp32_math for r in results} == {"ieee"}  # the CPU has no TF32
    md = bench.to_markdown(results, bench.machine())
    assert "| tiny-gru | B3 T2 I4 H6 L2 | float32 | ieee | rnnkit-reference | fwd+bwd |" in md
    assert bench.FP32_NOTE not in md
    data = bench.to_json(results, bench.machine())
    assert {"device", "torch", "triton", "date"} <= set(data["machine"])
    fields = {"median_ms", "p20_ms", "p80_ms", "ratio_to_torch", "seq_per_s", "peak_mem_mb", "first_call_s"}
    assert fields <= set(data["results"][0])


def test_compiled_cell_loop_runs_and_reports_its_compile_time():
    results = bench.run_bench(
        TINY, providers=("torch.nn", "compiled-cell-loop"), modes=("fwd+bwd",), device="cpu",
        warmup=0, repeats=2, compile_max_steps=3,
    )  # fmt: skip
    compiled = {r.row: r for r in results if r.provider == "compiled-cell-loop"}
    assert compiled["tiny-gru"].skipped == "4 steps to unroll > 3" and compiled["tiny-gru"].median_ms is None
    lstm = compiled["tiny-lstm"]
    assert lstm.skipped is None and lstm.ratio_to_torch > 0
    assert lstm.first_call_s > lstm.median_ms / 1e3  # the first call compiled the loop


def test_targets_are_judged_from_the_results():
    fake = [
        bench.BenchResult(
            "mnist-rowwise", "lstm", "", "float32", "rnnkit-cpu", "fwd+bwd", 3, 3, 3, 1.2, 1, None
        ),
        bench.BenchResult("imdb-rnn", "rnn", "", "float32", "rnnkit-cpu", "fwd+bwd", 6, 6, 6, 3.0, 1, None),
    ]
    recorded = ("imdb-rnn", "rnn", "", "float32", "rnnkit-cpu", "fwd+bwd+record")
    fake.append(bench.BenchResult(*recorded, 6.6, 6.6, 6.6, 3.3, 1, None))
    lines = bench.check_targets(fake, "cpu")
    assert lines == [
        "rnnkit-cpu fwd+bwd on mnist-rowwise: 1.20× torch.nn (target ≤ 1.2×): met",
        "rnnkit-cpu fwd+bwd on imdb-rnn: 3.00× torch.nn (target ≤ 1.2×): missed by 2.50×",
        "rnnkit-cpu per-step record on imdb-rnn: +10.0% of fwd+bwd (target ≤ 5%): missed by 2.00×",
    ]


def test_fp32_settings_are_torch_defaults_or_ieee_and_restored():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    with tf32_flags(cudnn=False, matmul=True):
        with bench.fp32_math("tf32"):  # torch's defaults
            assert cudnn.allow_tf32 and not matmul.allow_tf32
        with bench.fp32_math("ieee"):
            assert not cudnn.allow_tf32 and not matmul.allow_tf32
        assert not cudnn.allow_tf32 and matmul.allow_tf32
    with pytest.raises(ValueError, match="fp32: expected names among tf32, ieee, got 'fp16'"):
        bench.run_bench(TINY, providers=("torch.nn",), device="cpu", fp32=("fp16",))


def test_gpu_targets_are_judged_in_torch_defaults():
    def result(setting, ratio):
        return bench.BenchResult(
            "imdb-rnn", "rnn", "", "float32", "rnnkit-triton", "fwd+bwd", 1, 1, 1, ratio, 1, None,
            fp32_math=setting,
        )  # fmt: skip

    lines = bench.check_targets([result("tf32", 2.0), result("ieee", 0.5)], "cuda")
    assert lines == ["rnnkit-triton fwd+bwd on imdb-rnn: 2.00× torch.nn (target ≤ 1.0×): missed by 2.00×"]


def test_bad_provider_is_named():
    with pytest.raises(ValueError, match=r"providers: expected names among .* got 'cudnn'"):
        bench.run_bench(TINY, providers=("cudnn",), device="cpu")


def test_cli_bench_writes_json_and_markdown(tmp_path):
    md = tmp_path / "B.md"
    cmd = [sys.executable, str(ROOT / "cli.py"), "bench", "--config", "mnist-rowwise", "--device", "cpu",
           "--providers", "torch.nn,rnnkit-reference", "--modes", "fwd", "--warmup", "0", "--repeats", "1",
           "--json", str(tmp_path / "b.json"), "--markdown", str(md)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    assert [r["provider"] for r in data["results"]] == ["torch.nn", "rnnkit-reference"]
    text = md.read_text()
    assert text.startswith("# Benchmarks") and "| mnist-rowwise |" in text


def test_cells_row_loops_over_each_providers_cells():
    """A cells row times a Python loop over torch.nn's cells against one over rnnkit's; the layer
    providers' cell loop is that row's torch.nn, and cells record nothing."""
    row = bench.BenchRow("tiny-cells", "lstm", 3, 4, 1, 5, num_layers=2, dtype="float64", cells=True)
    results = bench.run_bench((row,), providers=EAGER, device="cpu", warmup=0, repeats=2)
    by = {(r.provider, r.mode): r for r in results}
    assert by[("rnnkit-reference", "fwd+bwd")].skipped is None
    assert by[("rnnkit-reference", "fwd+bwd")].ratio_to_torch > 0
    assert by[("naive-cell-loop", "fwd")].skipped == "the row is a cell loop (torch.nn's)"
    assert by[("rnnkit-reference", "fwd+bwd+record")].skipped == "no per-step record"
    model = bench.build_model(row, "rnnkit-reference", torch.device("cpu"))
    assert [type(c).__module__ for c in model.cells] == ["rnnkit.modules"] * 2
    assert model.cells[0].weight_hh.dtype == torch.float64


def test_record_mode_records_every_step():
    """fwd+bwd+record runs the step-gradient hook of every rnnkit layer in each training step."""
    row = bench.BenchRow("tiny-gru", "gru", 3, 4, 2, 5, num_layers=2)
    model = bench.build_model(row, "rnnkit-reference", torch.device("cpu"))
    calls = []
    for layer in model.modules():
        if hasattr(layer, "register_step_grad_hook"):
            layer.register_step_grad_hook(lambda m, i, g: calls.append(tuple(g.h.shape)))
    bench._step(model, torch.randn(4, 3, 2), "fwd+bwd+record")()
    assert calls == [(4, 3, 1, 5), (4, 3, 1, 5)]


def test_the_resources_table_leaves_out_what_the_kernels_never_run():
    """float64 rows (the sine-wave cells) run on the reference: `cli.py resources` compiles no
    kernel for them (one compiled for fp64 wanted 320 KiB of shared memory and read as a failure)."""
    from rnnkit.backends import TRITON_DTYPES

    runs, left_out = bench.kernel_rows()
    assert [r.name for r in left_out] == ["sine-cells"]
    assert all(getattr(torch, r.dtype) in TRITON_DTYPES for r in runs)
    assert len(runs) + len(left_out) == len(bench.DEFAULT_ROWS)
