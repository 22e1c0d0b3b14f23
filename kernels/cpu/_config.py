"""The CPU backend's switches and the one test of which tensors its fast code takes.

The switches are read from the environment once, at import, into `SETTINGS`; tests change the
attributes of that one object:

    RNNKIT_ONEDNN=1/0        the large fp32 products on oneDNN or on MKL (default: by CPU, `_onednn`)
    RNNKIT_CPU_STEP=0        no compiled LSTM step: torch's ops step instead (`_step`)
    RNNKIT_CPU_POOL_MB=N     free buffers the pool keeps mapped, in MiB (default 1024; 0: no pool)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


def _cpu() -> tuple[str, set[str]]:
    # /proc/cpuinfo's vendor_id ("GenuineIntel", "AuthenticAMD") and its first flags line, as a set;
    # ("", set()) where there is none
    vendor, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
                if vendor and flags:
                    break
    except OSError:
        pass
    return vendor, flags


def default_onednn() -> bool:
    """RNNKIT_ONEDNN=1/0 decides; otherwise oneDNN on CPUs other than Intel's that have AVX-512 (MKL
    does not use AVX-512 there, oneDNN does), MKL everywhere else, where it measured faster
    (docs/cpu-backend.md)."""
    given = os.environ.get("RNNKIT_ONEDNN")
    if given in ("0", "1"):
        return given == "1"
    vendor, flags = _cpu()
    return vendor != "GenuineIntel" and "avx512f" in flags


@dataclass
class Settings:
    onednn: bool  # the large fp32 products on oneDNN (else torch's, MKL)
    c_step: bool  # the compiled LSTM step, where it builds
    pool_bytes: int  # free buffers the pool keeps, at most


SETTINGS = Settings(
    onednn=default_onednn(),
    c_step=os.environ.get("RNNKIT_CPU_STEP", "1") != "0",
    pool_bytes=int(float(os.environ.get("RNNKIT_CPU_POOL_MB", "1024")) * 2**20),
)


def eager_cpu(*tensors: torch.Tensor | None, dtype: torch.dtype | None = torch.float32) -> bool:
    """Whether the fast code takes these tensors: every one (None skipped) a real CPU tensor of eager
    mode (no tracing, no fake tensor) and, unless ``dtype`` is None, of that dtype."""
    if torch.compiler.is_compiling():  # first: a trace must see none of the rest
        return False
    return all(
        t is None
        or (
            t.device.type == "cpu"
            and (dtype is None or t.dtype == dtype)
            and not isinstance(t, torch._subclasses.FakeTensor)
        )
        for t in tensors
    )
