"""The LSTM step's elementwise work fused into one C function (`_step.c`), for the CPU backend.

Between two recurrent products, a step does its gate nonlinearities, cell update and output in one
vectorized pass instead of 5-6 torch ops (docs/cpu-backend.md has the timings). The C file is
compiled once per machine, at first use, by the system's C compiler with ``-march=native``, into
``$RNNKIT_CACHE`` (default ``~/.cache/rnnkit``), and loaded with ctypes. Where there is no compiler,
the compile fails (a warning says why, once), or ``RNNKIT_CPU_STEP=0`` is set, `library()` is None
and the backend steps with torch's ops. Only fp32 CPU buffers of eager mode come here.
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
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from kernels.cpu import _memory
from kernels.cpu._config import SETTINGS, eager_cpu

SOURCE = Path(__file__).with_name("_step.c")
# -fno-trapping-math: without it gcc 12 keeps the selects of exp's clamps and tanh's two branches as
# branches on a CPU without AVX-512 masks (AVX2), and no loop vectorizes ("control flow in loop"): a
# forward step at B 128, H 128 took 2100 µs against 116 µs with it on an AMD EPYC (Zen 3), the same
# bits. It changes no value: it only lets the compiler assume that no floating-point trap is enabled.
FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=c11")
# tried in order: the machine's own vector units at their full width (gcc and clang default to 256
# bits even where there are 512: one forward step at B 128, H 128 took 146 µs at 256 and 105 µs at
# 512 bits on an Intel Xeon with AVX-512), then any target the compiler defaults to
TARGETS = (("-march=native", "-mprefer-vector-width=512"), ("-march=native",), ())
COMPILE_TIMEOUT_S = 120


def _compiler() -> str | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cache_dir() -> Path:
    # $RNNKIT_CACHE, else ~/.cache/rnnkit; where that cannot be written (a read-only home), the
    # temporary directory
    root = Path(os.environ.get("RNNKIT_CACHE") or Path.home() / ".cache" / "rnnkit") / "cpu_step"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"rnnkit-{os.getuid() if hasattr(os, 'getuid') else 0}" / "cpu_step"


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
    cache = _cache_dir()
    errors = []
    for target in TARGETS:
        flags = (*FLAGS, *target)
        key = hashlib.sha256(
            b"\0".join([source, cc.encode(), *map(str.encode, flags), _machine_key().encode()])
        )
        out = cache / f"cpu_step-{key.hexdigest()[:16]}.so"
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
    "rnnkit_lstm_fwd_step": (_P, _P, _P, _P, _P, _P, _I64, _I64, ctypes.c_float),
    "rnnkit_lstm_fwd_step_masked": (_P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64),
    "rnnkit_lstm_bwd_step": (_P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64),
    "rnnkit_gate_major": (_P, _P, _I64, _I64, _I64, _I64, _I64, _I64),
    "rnnkit_zone_gates": (_P, _P, _P, _I64, _I64, ctypes.c_float),
    "rnnkit_bernoulli": (_P, _I64, ctypes.c_uint64, ctypes.c_uint64),
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
            f"rnnkit: the fused CPU step did not compile ({e}); the CPU backend steps with torch's ops",
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
    return _load() if SETTINGS.c_step else None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block the CPU backend steps with torch's ops (the tests compare both paths)."""
    previous, SETTINGS.c_step = SETTINGS.c_step, False
    try:
        yield
    finally:
        SETTINGS.c_step = previous


def activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sigmoid, tanh, exp) of a dense fp32 CPU tensor by the C functions the step uses."""
    lib = library()
    if lib is None:
        raise RuntimeError("the fused CPU step is not available on this machine")
    x = x.contiguous()
    s, t, e = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    lib.rnnkit_activations(x.data_ptr(), s.data_ptr(), t.data_ptr(), e.data_ptr(), x.numel())
    return s, t, e


def zone_gates(gx: torch.Tensor, zoned: torch.Tensor, shift: float) -> torch.Tensor | None:
    """`rnnkit.zoneout.zone_gates`' forward in one C pass: gx [..., 4H] with the input gate's
    pre-activation lowered by ``shift`` and the forget gate's raised at the units of ``zoned``
    [..., H] (bool), the same sums as torch's ops. None where it does not apply (not a dense fp32 CPU
    tensor of eager mode, or no library): the caller then uses torch's ops."""
    lib = _library_for(gx)
    if lib is None or not (gx.is_contiguous() and zoned.is_contiguous()):
        return None
    H = zoned.shape[-1]
    out = _memory.empty(gx, *gx.shape)  # recycled: a fresh [T, B, 4H] is a first touch of every page
    lib.rnnkit_zone_gates(
        gx.data_ptr(), zoned.data_ptr(), out.data_ptr(), zoned.numel() // max(H, 1), H, shift
    )
    return out


def bernoulli(
    like: torch.Tensor, shape: Sequence[int], p: float, generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """A bool tensor of ``shape``, each element True with probability p (to 2^-32; the caller checks
    that 0 <= p <= 1), drawn in one C pass from a key that ``generator`` (torch's default when None)
    gives; None where the library does not apply to ``like`` (`zone_gates`' rule): the caller then
    draws with torch.rand."""
    lib = _library_for(like)
    if lib is None:
        return None
    key = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, generator=generator)) % 2**64
    out = torch.empty(tuple(shape), dtype=torch.bool)
    lib.rnnkit_bernoulli(out.data_ptr(), out.numel(), key, round(p * 2**32))
    return out


def _ptr(t: torch.Tensor, numel: int) -> int:
    # the address of a dense buffer of numel elements; anything else would be read or written out of
    # place by the C code, so it is refused here
    if not t.is_contiguous() or t.numel() != numel:
        raise ValueError(
            f"the fused step needs a dense buffer of {numel} elements, got {tuple(t.shape)} "
            f"with strides {t.stride()}"
        )
    return t.data_ptr()


class _Blocks:
    """The addresses of the [R, X] blocks of a dense [N, R, X] buffer, checked once: the loops below
    index them by step without making a tensor per step (about 1 µs each). ``None``: no buffer."""

    def __init__(self, t: torch.Tensor | None, rows: int, width: int) -> None:
        self.base = self.bytes = 0
        if t is not None:
            self.base = _ptr(t, t.shape[0] * rows * width)
            self.bytes = rows * width * t.element_size()

    def __getitem__(self, k: int) -> int | None:
        return self.base + k * self.bytes if self.base else None


class LSTMStep:
    """The C step for R rows (directions x batch) of H hidden units, and the loops that call it.
    Every buffer is dense fp32 (bool for ``valid``), [steps, D, B, X] in the backend's processing
    order, so a step's block is [R, X]."""

    def __init__(self, lib: ctypes.CDLL, rows: int, hidden: int) -> None:
        self.lib, self.R, self.H = lib, rows, hidden

    def forward(
        self, recurrent, gxp, h, c, valid, yp, gates_p, c_p, keep=0.0, reverse=False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward loop: pre = recurrent(h) [D, B, 4H], then the step adds gxp[s] to it and writes
        gates_p, c_p (row s, or s % 2 for two scratch rows) and yp[s]. With ``valid`` [T, D, B, 1], a
        masked row keeps its state and writes zeros. h, c [D, B, X]: the initial states (any strides;
        never written). Returns the final (h, c).

        ``keep``: cell zoneout's probability, for its expectation at inference (0: the plain step).
        ``reverse``: loop step s reads and writes time T - 1 - s of buffers in time order (one
        direction, no mask), so that a reverse direction needs no flipped copies."""
        R, H, lib = self.R, self.H, self.lib
        T, n = gxp.shape[0], gates_p.shape[0]
        # the input's part is added in the C pass, not in the product: oneDNN's fused add took
        # 340 against 215 µs a product (T 784, B 128, H 128, one thread of an Intel Xeon)
        inputs = _Blocks(gxp, R, 4 * H)
        gates, cells, ys = _Blocks(gates_p, R, 4 * H), _Blocks(c_p, R, H), _Blocks(yp, R, H)
        y_steps = yp.unbind(0)  # the products' operands, made at once
        if valid is None:
            c = c.contiguous()  # held here: the loop reads it by address
            c_prev, k = _ptr(c, R * H), None
            for s in range(T):
                t = T - 1 - s if reverse else s
                pre = recurrent(h)  # [D, B, 4H]
                k = t if n == T else s % n
                lib.rnnkit_lstm_fwd_step(
                    _ptr(pre, R * 4 * H), inputs[t], c_prev, gates[k], cells[k], ys[t], R, H, keep
                )  # fmt: skip
                c_prev, h = cells[k], y_steps[t]
            return h, (c if k is None else c_p[k])
        if reverse or keep:
            raise ValueError("the masked step runs forward in time and without zoneout")
        # the masked step updates the carried states in place: dense copies of its own
        h, c = (torch.clone(x, memory_format=torch.contiguous_format) for x in (h, c))
        masks, c_state, h_state = _Blocks(valid, R, 1), _ptr(c, R * H), _ptr(h, R * H)
        for s in range(T):
            pre = recurrent(h)
            k = s % n
            lib.rnnkit_lstm_fwd_step_masked(
                _ptr(pre, R * 4 * H), inputs[s], masks[s], c_state, h_state, gates[k], cells[k], ys[s], R, H
            )
        return h, c

    def backward(self, back, a, b, gates_p, c_p, c_prev, dh, dyp, valid, dc, chunk, rec_h, rec_c):
        """Loop steps b-1 down to a: the step writes δa of step s into chunk[s - a] and, where asked,
        rec_h[s], rec_c[s]; dc [D, B, H] is carried back in place; dh = back(δa) (kept on masked
        rows). c_prev [b - a, D, B, H]: the cell state entering each of those steps. Returns dh."""
        R, H, lib = self.R, self.H, self.lib
        gates, cells, prevs = _Blocks(gates_p, R, 4 * H), _Blocks(c_p, R, H), _Blocks(c_prev, R, H)
        dys, masks, deltas = _Blocks(dyp, R, H), _Blocks(valid, R, 1), _Blocks(chunk, R, 4 * H)
        recs_h, recs_c, carried = _Blocks(rec_h, R, H), _Blocks(rec_c, R, H), _ptr(dc, R * H)
        delta_steps = chunk.unbind(0)
        for s in reversed(range(a, b)):
            k = s - a
            lib.rnnkit_lstm_bwd_step(
                gates[s], cells[s], prevs[k], _ptr(dh, R * H), dys[s], masks[s], carried, deltas[k],
                recs_h[s], recs_c[s], R, H,
            )  # fmt: skip
            dpre = delta_steps[k]  # [D, B, 4H]
            dh = back(dpre) if valid is None else torch.where(valid[s], back(dpre), dh)
        return dh

    def to_gate_major(self, dgm: torch.Tensor, chunk: torch.Tensor, a: int, K: int) -> None:
        """chunk[:K] [K, D, B, G] (the δa of loop steps a..a+K-1) into dgm [D, G, T, B] in time order,
        what `recurrence._to_gate_major` does with a transposed copy: one C pass per direction (a
        chunk of 4 steps at B 128, H 128: about 200 µs against 400-800 µs on one thread of an Intel
        Xeon)."""
        D, G, T, B = dgm.shape
        if not (a >= 0 and 0 <= K <= chunk.shape[0] and a + K <= T and chunk.shape[1:] == (D, B, G)):
            # the C pass writes by address: what would land outside dgm is refused here
            where = f"chunk {tuple(chunk.shape)}, steps {a}..{a + K}"
            raise ValueError(f"{where} do not fit dgm {tuple(dgm.shape)}")
        base, src, size = _ptr(dgm, dgm.numel()), _ptr(chunk, chunk.numel()), dgm.element_size()
        for d in range(D):  # loop step s of the reverse direction is time T - 1 - s
            t0, step = (a, B) if d == 0 else (T - 1 - a, -B)
            dst = base + size * (d * G * T * B + t0 * B)
            self.lib.rnnkit_gate_major(src + size * d * B * G, dst, K, B, G, D * B * G, T * B, step)


def lstm_step(rows: int, hidden: int, *buffers: torch.Tensor) -> LSTMStep | None:
    """The fused LSTM step for buffers like these, or None where it cannot take them: it takes fp32
    CPU tensors in eager mode (no tracing, no fake tensors), where the library built."""
    lib = _library_for(*buffers)
    return None if lib is None else LSTMStep(lib, rows, hidden)


def _library_for(*buffers: torch.Tensor) -> ctypes.CDLL | None:
    # the library, for fp32 CPU tensors of eager mode (no tracing, no fake tensors); else None
    return library() if eager_cpu(*buffers) else None
