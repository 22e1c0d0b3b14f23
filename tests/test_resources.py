"""The kernels as an H100 would get them: compiled for sm_90 by Triton and ptxas, no GPU needed.

Checks what the design rests on and the interpreter cannot show: every chosen launch compiles for
the GPU, the resident path really keeps W_hh in shared memory, and the launch settings of
`kernels._config` do not spill registers on the benchmark's shapes. Runs in a subprocess without
TRITON_INTERPRET (the test session has it set, and a compiler crash must fail one test, not the run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from kernels.resources import ptxas_available

pytestmark = pytest.mark.skipif(
    not ptxas_available(), reason="Triton's CUDA backend (ptxas) is not installed"
)

# (cell, B, H, dtype): the fp32 benchmark rows (`rnnkit.bench.DEFAULT_ROWS`) and the resident path
# at its limit and below a tile
SHAPES = [
    ("lstm", 64, 512, "float32"),  # pytorch-default
    ("lstm", 128, 256, "float32"),  # mnist-rowwise, imdb-lstm
    ("rnn", 100, 256, "float32"),  # imdb-rnn
    ("lstm", 8, 128, "float32"),  # long-small-batch
    ("gru", 32, 128, "float32"),  # gradflow-gru (and -lstm, -rnn at the same sizes below)
    ("lstm", 32, 128, "float32"),
    ("rnn", 32, 128, "float32"),
    ("lstm", 8, 32, "float32"),  # resident
    ("gru", 64, 32, "bfloat16"),
    ("rnn", 64, 32, "float32"),
    ("lstm", 64, 16, "bfloat16"),
]


def _compile_all(shapes, path: str = "auto") -> list[dict]:
    script = textwrap.dedent(
        f"""
        import dataclasses, json, torch
        from kernels import _config
        from kernels.resources import cell_launches, compile_resources
        _config.KERNEL_PATH = {path!r}
        out = []
        for cell, B, H, dtype in {shapes!r}:
            for launch in cell_launches(cell, B, H, dtype=getattr(torch, dtype)):
                r = compile_resources(launch)
                out.append(dict(shape=[cell, B, H, dtype], kernel=r.kernel, registers=r.registers,
                                spill_stores=r.spill_stores, spill_loads=r.spill_loads,
                                shared=r.shared, meta=dict(r.meta)))
        print(json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when it is unset
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, f"compiling for sm_90 failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled():
    return _compile_all(SHAPES)


def test_every_launch_compiles_for_the_gpu(compiled):
    assert len(compiled) == 2 * len(SHAPES)  # a forward and a backward kernel per shape
    limit = 32  # kernels._config.RESIDENT_MAX_H, written out: the test pins the measured limit
    paths = {(r["shape"][2] <= limit, "resident" in r["kernel"]) for r in compiled}
    assert paths == {(True, True), (False, False)}, f"H <= {limit} runs resident, larger H streams"


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
