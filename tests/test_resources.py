"""The kernels as an H100 would get them: compiled for sm_90 by Triton and ptxas, no GPU needed.

Checks what the design rests on and the interpreter cannot show: every chosen launch compiles for
the GPU, the resident path really keeps W_hh in shared memory, the launch settings of
`kernels._config` do not spill registers on the benchmark's shapes, every product runs on tensor
cores (fp32 as TF32, torch.nn's default on a GPU; bf16 and fp16 as they are), and the split kernels'
programs are all resident at once (their grid barrier needs it). Runs in a subprocess without
TRITON_INTERPRET (the test session has it set, and a compiler crash must fail one test, not the run).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from kernels.resources import ptxas_available

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not ptxas_available(), reason="Triton's CUDA backend (ptxas) is not installed"
)

# (cell, B, H, dtype, the path `kernels._config` picks): the benchmark rows (`rnnkit.bench.DEFAULT_ROWS`),
# fp32 compiled as TF32 (torch.nn's default on a GPU), and the resident path at and below its limits
SHAPES = [
    ("lstm", 16, 768, "bfloat16", "split"),  # flashrnn-h768
    ("lstm", 16, 768, "float16", "split"),
    ("lstm", 64, 512, "float32", "split"),  # pytorch-default
    ("lstm", 128, 256, "float32", "split"),  # mnist-rowwise, imdb-lstm
    ("rnn", 100, 256, "float32", "split"),  # imdb-rnn
    ("lstm", 8, 128, "float32", "split"),  # long-small-batch
    ("gru", 32, 128, "float32", "split"),  # gradflow-gru (and -lstm, -rnn at the same sizes below)
    ("lstm", 32, 128, "float32", "split"),
    ("rnn", 32, 128, "float32", "resident"),  # an RNN's W_hh at H = 128: 64 KiB
    ("lstm", 8, 32, "float32", "resident"),
    ("gru", 64, 64, "bfloat16", "resident"),
    ("lstm", 100, 64, "float32", "resident"),
    ("lstm", 64, 16, "bfloat16", "resident"),
]


def _compiler_env() -> dict[str, str]:
    # this test session's environment without TRITON_INTERPRET, the checkout importable
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when it is unset
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _compile_all(shapes, path: str = "auto") -> list[dict]:
    script = textwrap.dedent(
        f"""
        import dataclasses, json, torch
        from kernels import _config
        from kernels.resources import cell_launches, compile_resources
        _config.KERNEL_PATH = {path!r}
        out = []
        for cell, B, H, dtype, *_ in {shapes!r}:
            for launch in cell_launches(cell, B, H, dtype=getattr(torch, dtype)):
                r = compile_resources(launch)
                out.append(dict(shape=[cell, B, H, dtype], kernel=r.kernel, registers=r.registers,
                                spill_stores=r.spill_stores, spill_loads=r.spill_loads,
                                shared=r.shared, meta=dict(r.meta), programs=r.programs,
                                coresident=r.coresident(), tensor_core_ops=r.tensor_core_ops))
        print(json.dumps(out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_compiler_env(), timeout=900
    )
    assert done.returncode == 0, f"compiling for sm_90 failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled():
    return _compile_all(SHAPES)


def test_every_launch_compiles_for_the_gpu(compiled):
    """A forward and a backward kernel per shape, each on the path the table pins."""

    def path(kernel: str) -> str:
        return "resident" if "resident" in kernel else "split" if "split" in kernel else "streamed"

    got = [(tuple(r["shape"]), path(r["kernel"])) for r in compiled]
    assert got == [(tuple(s[:4]), s[4]) for s in SHAPES for _ in ("fwd", "bwd")]


def test_every_product_runs_on_tensor_cores(compiled):
    """HMMA (or Hopper's HGMMA) in every kernel: fp32 compiled as TF32, bf16/fp16 as they are."""
    scalar = [f"{r['kernel']} at {r['shape']}" for r in compiled if r["tensor_core_ops"] == 0]
    assert not scalar, "no tensor-core instruction in:\n" + "\n".join(scalar)


def test_split_kernels_are_coresident_and_fit_their_model(compiled):
    """The grid barrier waits for every program: all must be on the device at once (one SM each),
    and `_config.split_shared_memory`, which decides the path, must not be below the compiler's."""
    from kernels._config import split_shared_memory

    split = [r for r in compiled if "split" in r["kernel"]]
    assert split
    for r in split:
        _, _, H, dtype = r["shape"]
        m = r["meta"]
        where = f"{r['kernel']} at {r['shape']}"
        assert r["coresident"] and r["programs"] <= 132, f"{where}: {r['programs']} programs"
        itemsize = 4 if dtype == "float32" else 2
        backward = "bwd" in r["kernel"]
        modelled = split_shared_memory(
            m["NG"], m["BB"], m["BH"], m["BCP"], H, H, itemsize, backward=backward, BK=m.get("BK", 32)
        )
        assert modelled >= r["shared"], f"{where}: model {modelled} B < {r['shared']} B"


def test_resident_kernels_keep_w_hh_in_shared_memory(compiled):
    """W_hh (fp32, gates padded to a power of two, BH x BH each) is allocated in shared memory
    once: the program's shared memory is at least that large."""
    for r in compiled:
        if "resident" not in r["kernel"]:
            continue
        gates = {"rnn": 1, "lstm": 4, "gru": 4}[r["shape"][0]]
        w_bytes = gates * r["meta"]["BH"] ** 2 * 4
        assert r["shared"] >= w_bytes, (
            f"{r['kernel']} at {r['shape']}: {r['shared']} B shared < W_hh {w_bytes} B"
        )


def test_chosen_launch_settings_do_not_spill(compiled):
    spilled = [
        f"{r['kernel']} at {r['shape']}: {r['registers']} registers, "
        f"{r['spill_stores']}/{r['spill_loads']} B spilled per thread (BB/BH/BK "
        f"{r['meta']['BB']}/{r['meta']['BH']}/{r['meta'].get('BK', '-')})"
        for r in compiled
        if r["spill_stores"] or r["spill_loads"]
    ]
    assert not spilled, "\n".join(spilled)


# the resident path forced where its scratch is largest: every cell at the tiles a GPU picks for B = 64
# (32 rows), up to H = 64 (an LSTM's W_hh of 64 KiB), and bf16, whose scratch differs
FORCED_RESIDENT = [
    ("rnn", 64, 64, "float32"),
    ("lstm", 64, 64, "float32"),
    ("gru", 64, 64, "float32"),
    ("lstm", 64, 32, "bfloat16"),
    ("gru", 8, 64, "bfloat16"),
]


def test_shared_memory_model_covers_the_resident_kernels():
    """`kernels._config.resident_shared_memory` decides whether a resident launch fits the device
    (no OutOfResources at launch time): it must not be below what the compiler allocates."""
    from kernels._config import resident_shared_memory

    compiled = _compile_all(FORCED_RESIDENT, path="resident")
    assert all("resident" in r["kernel"] for r in compiled)
    for r in compiled:
        G = {"rnn": 1, "lstm": 4, "gru": 3}[r["shape"][0]]
        modelled = resident_shared_memory(G, r["meta"]["BB"], r["meta"]["BH"], backward="bwd" in r["kernel"])
        assert modelled >= r["shared"], f"{r['kernel']} at {r['shape']}: model {modelled} B < {r['shared']} B"


def test_kernel_census_compiles_and_compares(tmp_path):
    """tools/kernel_census.py, the before/after check of a kernel refactor: its first two launches
    (the resident tanh RNN, forward and backward, fp32 IEEE at H 32) compile with no spill, and its
    comparison names a launch that got worse and stays silent on one that did not."""
    env, after = _compiler_env(), tmp_path / "after.json"
    cmd = [sys.executable, str(ROOT / "tools" / "kernel_census.py"), "--json", str(after), "--limit", "1"]
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    rows = json.loads(after.read_text())
    assert [(r["path"], r["cell"], r["which"]) for r in rows] == [
        ("resident", "rnn", "fwd"),
        ("resident", "rnn", "bwd"),
    ]
    assert all(r["registers"] > 0 and r["sass"] > 0 and r["spilled"] == 0 for r in rows), rows
    before = tmp_path / "before.json"
    worse = dict(rows[1], registers=rows[1]["registers"] - 9)  # the backward had 9 fewer registers
    before.write_text(json.dumps([rows[0], worse]))
    cmd += ["--compare", str(before)]
    printed = subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    lines = printed.stdout.splitlines()
    bwd = rows[1]
    assert [line for line in lines if line.startswith("worse:")] == [
        "worse: resident rnn float32 ieee 16 32 1 0 bwd "
        f"registers {worse['registers']} -> {bwd['registers']}, "
        f"spilled 0 -> 0, bar {bwd['bar']} -> {bwd['bar']}, sass {bwd['sass']} -> {bwd['sass']}"
    ], printed.stdout
    assert lines[-1] == "spilled bytes in all: 0 -> 0"
