"""What a recurrent kernel costs on chip — registers, spills, shared memory — with no GPU.

Triton compiles for a CUDA target without a driver, and its bundled `ptxas` reports what each
thread needs. That is the question the kernel design turns on (does a program's working set, W_hh
included, stay on chip?), so the launch settings are checked against it here; speed still needs a
GPU. The launchers run on ``device="meta"`` tensors inside `kernels._config.capture_launches`, so
the report compiles exactly the launches a real call would make (block sizes, flags, dtypes).
``python cli.py resources`` prints it for the benchmark's shapes (or ``--cell lstm -B 32 -H 128``).

Differences from a real launch, all small: ints are typed i32 and marked divisible by 16 when they
are (as Triton's JIT does), pointers are taken as 16-byte aligned (true of fresh torch tensors),
and the Triton version here may not be the GPU machine's.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import gru, lstm, rnn
from kernels._config import SM90_SMS, Launch, capture_launches

_TYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
}


# sm_90 (H100, H200) per SM: registers, shared memory (228 KiB, 1 KiB of it reserved per program),
# threads and programs; the SMs of an H100 SXM or H200
SM90_REGISTERS, SM90_SHARED_PER_SM, SM90_THREADS, SM90_PROGRAMS = 65536, 233472, 2048, 32
# SASS opcodes of the tensor cores: HMMA (mma.sync: fp16, bf16, tf32) and HGMMA (Hopper's wgmma)
TENSOR_CORE_OPS = ("HMMA", "HGMMA")


@dataclass(frozen=True)
class Resources:
    """What one compiled kernel needs per thread (registers, spills) and per program (shared), how
    many of its programs an SM holds at once, and the SASS instructions that matter."""

    kernel: str
    registers: int
    spill_stores: int  # bytes per thread written to local memory because registers ran out
    spill_loads: int
    shared: int  # bytes of shared memory per program
    num_warps: int
    meta: tuple[tuple[str, object], ...]  # the launch's constexprs
    programs: int = 1  # the launch's grid size
    sass: tuple[tuple[str, int], ...] = ()  # opcode -> count in the kernel's SASS

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0

    @property
    def per_sm(self) -> int:
        """Programs of this kernel one sm_90 SM holds at once (registers are allocated per warp in
        multiples of 256, i.e. per thread in multiples of 8)."""
        threads = 32 * self.num_warps
        by_registers = SM90_REGISTERS // (-(-self.registers // 8) * 8 * threads)
        by_shared = SM90_SHARED_PER_SM // (self.shared + 1024)
        return min(by_registers, by_shared, SM90_THREADS // threads, SM90_PROGRAMS)

    def coresident(self, sms: int = SM90_SMS) -> bool:
        """Every program of the launch on the device at once: what a grid barrier needs."""
        return self.programs <= self.per_sm * sms

    @property
    def tensor_core_ops(self) -> int:
        return sum(n for op, n in self.sass if op in TENSOR_CORE_OPS)


def ptxas_available() -> bool:
    """True when Triton's CUDA backend and its bundled `ptxas` are present (Linux x86-64 wheels)."""
    try:
        return os.access(_ptxas(90), os.X_OK)
    except (ImportError, AttributeError, RuntimeError):
        return False


def _ptxas(capability: int) -> str:
    from triton.backends.nvidia import compiler as nv

    return nv.get_ptxas(capability).path if hasattr(nv, "get_ptxas") else nv.knobs.nvidia.ptxas.path


def _signature(launch: Launch) -> tuple[dict[str, str], dict[str, object], dict[tuple[int], list]]:
    # each parameter's type as Triton's JIT would specialize it: constexprs (and None) by value,
    # tensors by dtype (16-byte aligned), ints as i32/i64 (divisible by 16 when they are)
    kernel = launch.kernel
    names = list(kernel.arg_names)
    unspecialized = {names[i] if isinstance(i, int) else i for i in kernel.do_not_specialize}
    constexpr = {p.name for p in kernel.params if p.is_constexpr}
    values = dict(zip([n for n in names if n not in launch.meta], launch.args, strict=False))
    values.update(launch.meta)
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(names):
        value = values[name]
        if name in constexpr or value is None:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"argument {name} of {kernel.__name__}: cannot type {type(value).__name__}")
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0 and name not in unspecialized:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


_USED = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


_cache: dict[tuple, Resources] = {}  # one compile per distinct launch and target in a process


def compile_resources(launch: Launch, capability: int = 90) -> Resources:
    """Compile ``launch``'s kernel for CUDA compute ``capability`` (90: H100/H200) and read its
    register and spill counts from `ptxas -v`; shared memory from Triton's own allocation."""
    signature, constexprs, attrs = _signature(launch)
    num_warps = launch.meta.get("num_warps", 4)
    key = (launch.kernel.__name__, tuple(signature.items()), tuple(constexprs.items()), str(attrs), num_warps)
    if (key, capability) in _cache:
        return _cache[(key, capability)]
    source = ASTSource(launch.kernel, signature, constexprs, attrs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps}
    )
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        arch = f"sm_{capability}{'a' if capability >= 90 else ''}"
        # Triton's own ptxas flags (backends/nvidia/compiler.py), plus -v for the counts
        flags = ["-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}"]
        cubin = os.path.join(tmp, "kernel.cubin")
        command = [_ptxas(capability), *flags, ptx, "-o", cubin]
        log = subprocess.run(command, capture_output=True, text=True, check=True).stderr
        sass = _sass_mix(cubin)
    used, spills = _USED.search(log), _SPILLS.search(log)
    if used is None or spills is None:
        raise RuntimeError(f"could not read registers and spills from ptxas -v:\n{log}")
    result = Resources(
        kernel=launch.kernel.__name__,
        registers=int(used.group(1)),
        spill_stores=int(spills.group(1)),
        spill_loads=int(spills.group(2)),
        shared=int(compiled.metadata.shared),
        num_warps=num_warps,
        meta=tuple(sorted(constexprs.items())),
        programs=math.prod(launch.grid),
        sass=sass,
    )
    _cache[(key, capability)] = result
    return result


_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def _sass_mix(cubin: str) -> tuple[tuple[str, int], ...]:
    # opcode counts of the cubin's SASS (Triton's bundled cuobjdump), most frequent first
    from triton import knobs

    text = subprocess.run(
        [knobs.nvidia.cuobjdump.path, "-sass", cubin], capture_output=True, text=True, check=True
    ).stdout
    counts: dict[str, int] = {}
    for opcode in _OPCODE.findall(text):
        counts[opcode] = counts.get(opcode, 0) + 1
    return tuple(sorted(counts.items(), key=lambda item: -item[1]))


def cell_launches(
    cell: str,
    B: int,
    H: int,
    *,
    dtype: torch.dtype = torch.float32,
    T: int = 8,
    D: int = 1,
    proj_size: int = 0,
    precision: str = "tf32",
) -> list[Launch]:
    """The forward and backward launches of one layer of ``cell`` ("rnn", "rnn_relu", "lstm", "gru")
    at batch B, hidden H, made on meta tensors (nothing runs, nothing is allocated). ``precision``
    is that of fp32 products: "tf32", what torch.nn's layers use on a GPU by default, or "ieee"."""
    meta = dict(device="meta", dtype=dtype)
    G = {"rnn": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}[cell]
    P = proj_size or H
    gx, w_hh = torch.empty(T, B, D, G * H, **meta), torch.empty(D, G * H, P, **meta)
    with capture_launches() as launches:
        if cell in ("rnn", "rnn_relu"):
            act = "relu" if cell == "rnn_relu" else "tanh"
            out = rnn.rnn_fwd(gx, w_hh, nonlinearity=act, precision=precision)
            rnn.rnn_bwd(out.y, None, out.y, w_hh, nonlinearity=act, precision=precision)
        elif cell == "lstm":
            w_hr = torch.empty(D, P, H, **meta) if proj_size else None
            out = lstm.lstm_fwd(gx, w_hh, w_hr=w_hr, precision=precision)
            lstm.lstm_bwd(out.y, None, None, w_hh, w_hr, None, out.gates, out.c_steps, precision=precision)
        else:
            out = gru.gru_fwd(gx, w_hh, torch.empty(D, H, **meta), precision=precision)
            gru.gru_bwd(out.y, None, w_hh, None, out.y, out.gates, out.ghn, precision=precision)
    return launches
