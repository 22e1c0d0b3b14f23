"""The LSTM step's elementwise work fused into one C function, for the reference path on the CPU.

Between two recurrent products, an LSTM step of the reference did its gate nonlinearities, cell
update and output in 6 torch ops (5 in the backward), each a pass over the step's tiles and 2-7 µs of
dispatch. `kernels/_cpu_step.c` does each in one pass, vectorized by the C compiler. One thread of
the CI machine (AMD EPYC, AVX-512), one forward step: 32.3 -> 13.2 µs at B 32, H 128, 190 -> 99 µs at
B 128, H 256; its exp, sigmoid and tanh are within 1.4e-7 (relative) of float64's.

The C file is compiled once per machine, at first use, by the system's C compiler (the one Triton
needs too), with ``-march=native``, into ``$RNNKIT_CACHE`` (default ``~/.cache/rnnkit``), and loaded
with ctypes. Where there is no compiler, the compile fails (a warning says why, once), or
``RNNKIT_CPU_STEP=0`` is set, `library()` is None and the reference steps with torch's ops, as
before. Only dense fp32 CPU buffers of eager mode come here (`usable`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("_cpu_step.c")
FLAGS = ("-O3", "-fno-math-errno", "-fPIC", "-shared", "-std=c11")
# tried in order: the machine's own vector units, then any target the compiler defaults to
TARGETS = (("-march=native", "-mprefer-vector-width=256"), ("-march=native",), ())
COMPILE_TIMEOUT_S = 120

_enabled = os.environ.get("RNNKIT_CPU_STEP", "1") != "0"


def _compiler() -> str | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cache_dir() -> Path:
    root = os.environ.get("RNNKIT_CACHE") or Path.home() / ".cache" / "rnnkit"
    return Path(root) / "cpu_step"


def _machine_key() -> str:
    # -march=native code runs only on the CPU it was built for: the key names that CPU
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    return cpu


def _build(cc: str) -> Path:
    # compile SOURCE into the cache (once per source, compiler, flags and CPU); a finished library
    # is renamed into place, so processes that build at the same time never load a partial file
    source = SOURCE.read_bytes()
    errors = []
    for target in TARGETS:
        flags = (*FLAGS, *target)
        key = hashlib.sha256(
            b"\0".join([source, cc.encode(), *map(str.encode, flags), _machine_key().encode()])
        )
        out = _cache_dir() / f"cpu_step-{key.hexdigest()[:16]}.so"
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            done = subprocess.run(
                [cc, *flags, str(SOURCE), "-o", tmp],
                capture_output=True,
                text=True,
                timeout=COMPILE_TIMEOUT_S,
            )
            if done.returncode == 0:
                os.replace(tmp, out)
                return out
            errors.append(f"{' '.join(target) or 'default target'}: {done.stderr.strip()[-500:]}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    raise RuntimeError("; ".join(errors))


_P, _I64 = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "rnnkit_activations": (_P, _P, _P, _P, _I64),
    "rnnkit_lstm_fwd_step": (_P, _P, _P, _P, _P, _I64, _I64),
    "rnnkit_lstm_fwd_step_masked": (_P, _P, _P, _P, _P, _P, _P, _I64, _I64),
    "rnnkit_lstm_bwd_step": (_P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64),
}


@functools.cache
def _load() -> ctypes.CDLL | None:
    if not sys.platform.startswith(("linux", "darwin")):
        return None
    cc = _compiler()
    if cc is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(
            f"rnnkit: the fused CPU step did not compile ({e}); the reference steps with torch's ops",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled step functions, or None (disabled, or no working C compiler here)."""
    return _load() if _enabled else None


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the fused step can take buffers like these: fp32 on the CPU, in eager mode."""
    return (
        _enabled
        and not torch.compiler.is_compiling()
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not any(isinstance(t, torch._subclasses.FakeTensor) for t in tensors)
        and library() is not None
    )


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block the reference steps with torch's ops (the tests compare both paths)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sigmoid, tanh, exp) of a dense fp32 CPU tensor by the C functions the step uses."""
    lib = library()
    if lib is None:
        raise RuntimeError("the fused CPU step is not available on this machine")
    x = x.contiguous()
    s, t, e = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    lib.rnnkit_activations(x.data_ptr(), s.data_ptr(), t.data_ptr(), e.data_ptr(), x.numel())
    return s, t, e


def _ptr(t: torch.Tensor | None, numel: int) -> int | None:
    # the address of a dense buffer of numel elements (None for an absent one); anything else
    # would be read or written out of place by the C code, so it is refused here
    if t is None:
        return None
    if not t.is_contiguous() or t.numel() != numel:
        raise ValueError(
            f"the fused step needs a dense buffer of {numel} elements, got {tuple(t.shape)} "
            f"with strides {t.stride()}"
        )
    return t.data_ptr()


class LSTMStep:
    """The C step for R rows (directions x batch) of H hidden units; every buffer a dense fp32
    [R, X] block (a [D, B, X] slice of the reference's buffers)."""

    def __init__(self, lib: ctypes.CDLL, rows: int, hidden: int) -> None:
        self.lib, self.R, self.H = lib, rows, hidden

    def forward(self, pre, c_prev, gates, c, h) -> None:
        """gates, c, h of a step where every row is real, from pre [R, 4H] and c_prev [R, H]."""
        R, H = self.R, self.H
        self.lib.rnnkit_lstm_fwd_step(
            _ptr(pre, R * 4 * H), _ptr(c_prev, R * H), _ptr(gates, R * 4 * H), _ptr(c, R * H),
            _ptr(h, R * H), R, H,
        )  # fmt: skip

    def forward_masked(self, pre, valid, c_state, h_state, gates, c, h) -> None:
        """The same with valid [R] bool: valid rows replace c_state, h_state; masked rows keep them
        and write zeros."""
        R, H = self.R, self.H
        self.lib.rnnkit_lstm_fwd_step_masked(
            _ptr(pre, R * 4 * H), _ptr(valid, R), _ptr(c_state, R * H), _ptr(h_state, R * H),
            _ptr(gates, R * 4 * H), _ptr(c, R * H), _ptr(h, R * H), R, H,
        )  # fmt: skip

    def backward(self, gates, c, c_prev, dh, dy, valid, dc, dpre, rec_h, rec_c) -> None:
        """dpre [R, 4H] of a step, dc carried back in place; dy, valid, rec_h, rec_c may be None."""
        R, H = self.R, self.H
        self.lib.rnnkit_lstm_bwd_step(
            _ptr(gates, R * 4 * H), _ptr(c, R * H), _ptr(c_prev, R * H), _ptr(dh, R * H),
            _ptr(dy, R * H), _ptr(valid, R), _ptr(dc, R * H), _ptr(dpre, R * 4 * H),
            _ptr(rec_h, R * H), _ptr(rec_c, R * H), R, H,
        )  # fmt: skip


def lstm_step(rows: int, hidden: int, *buffers: torch.Tensor) -> LSTMStep | None:
    """The fused LSTM step for buffers like these, or None where it cannot take them."""
    if not usable(*buffers):
        return None
    return LSTMStep(library(), rows, hidden)
