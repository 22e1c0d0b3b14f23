"""What one step of the split kernels (`kernels/split.py`) costs on this GPU, and which block sizes
are fastest: the measurements that `kernels/README.md`'s latency model and `_config._split_config`'s
choices need.

    PYTHONPATH=. python tools/split_probe.py [--rows gradflow-lstm,imdb-lstm] [--json FILE] [--budget S]

For the recurrence of each bench row (one layer, one direction; the input projection and the weight
gradients left out), the split forward and backward kernels alone, through the launchers with the
launch configuration replaced and the kernels launched raw (no `wrap_triton` dispatch, as inside the
layers' operators), timed with `triton.testing.do_bench`:

- ``chosen``: what `_config.launch_config` picks for the split path;
- ``BH×2``, ``BH×4``: fewer, wider programs; ``BB/2``, ``BB×2``: other batch tiles; ``warps 4|8``;
  the backward's reduction chunk ``BK 32|64|128``;
- ``no barrier``: the chosen configuration in one launch without its grid barrier (``SYNC=False``):
  its numbers are wrong, its time is that of the work alone.

A configuration is skipped where its programs cannot all be resident at once (more than one per SM)
or its weights do not fit the device's shared memory, as `_config` would. Every timed configuration
but ``no barrier`` is checked against `kernels.reference` (largest absolute error of y, or of dgx).
Results are printed as a table and written, after every measurement, to ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
import triton
from triton.testing import do_bench

from kernels import _config, gru, lstm, reference, rnn, split
from rnnkit.bench import DEFAULT_ROWS

MODULES = {"rnn": rnn, "lstm": lstm, "gru": gru}
DEVICE = "cuda"  # the tests run the probe's code on the interpreter
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _inputs(cell: str, B: int, T: int, H: int, dtype: torch.dtype) -> tuple[tuple, dict, dict]:
    # one direction, no lengths, no initial state (the bench's layers start from zeros)
    kw = {"device": DEVICE, "dtype": dtype}
    gx = torch.randn(T, B, 1, GATES[cell] * H, **kw)
    w_hh = (torch.randn(1, GATES[cell] * H, H, device=DEVICE) / H**0.5).to(dtype)
    up = {"dy": torch.randn(T, B, 1, H, **kw), "dh_n": torch.randn(1, B, H, **kw)}
    if cell == "rnn":
        return (gx, w_hh, None, None), {"nonlinearity": "tanh"}, up
    if cell == "gru":
        return (gx, w_hh, torch.randn(1, H, **kw), None, None), {}, up
    up["dc_n"] = torch.randn(1, B, H, **kw)
    return (gx, w_hh, None, None, None, None), {}, up


def _backward(module, cell: str, args: tuple, kwargs: dict, fwd, up: dict, precision: str):
    if cell == "rnn":
        return module.rnn_bwd(up["dy"], up["dh_n"], fwd.y, args[1], None, precision=precision, **kwargs)
    if cell == "gru":
        return module.gru_bwd(up["dy"], up["dh_n"], args[1], None, fwd.y, fwd.gates, fwd.ghn, None,
                              precision=precision)  # fmt: skip
    return module.lstm_bwd(up["dy"], up["dh_n"], up["dc_n"], args[1], None, None, fwd.gates, fwd.c_steps,
                           None, precision=precision)  # fmt: skip


def _fits(cfg: _config.LaunchConfig, B: int, H: int, G: int, dtype: torch.dtype, backward: bool) -> str:
    programs = triton.cdiv(H, cfg.BH) * triton.cdiv(B, cfg.BB)
    sms = _config.multiprocessor_count(torch.device("cuda"))
    if programs > sms:
        return f"{programs} programs > {sms} SMs"
    needed = _config.split_shared_memory(
        G, cfg.BB, cfg.BH, max(16, cfg.BC), H, H, torch.tensor([], dtype=dtype).element_size(),
        backward=backward, BK=cfg.BK,
    )  # fmt: skip
    limit = _config.shared_memory_limit(torch.device("cuda"))
    return f"{needed} bytes of shared memory > {limit}" if needed > limit else ""


def _variants(base: _config.LaunchConfig, H: int, backward: bool) -> list[tuple[str, _config.LaunchConfig]]:
    out = [("chosen", base)]
    for k in (2, 4):
        if base.BH * k <= triton.next_power_of_2(H):
            out.append((f"BH×{k}", dataclasses.replace(base, BH=base.BH * k, BC=base.BC * k)))
    if base.BB > 16:
        out.append(("BB/2", dataclasses.replace(base, BB=base.BB // 2)))
    if base.BB < 64:
        out.append(("BB×2", dataclasses.replace(base, BB=base.BB * 2)))
    other = 8 if base.num_warps == 4 else 4
    out.append((f"warps {other}", dataclasses.replace(base, num_warps=other)))
    for bk in (32, 64, 128):  # the backward's reduction chunk (the forward has none)
        if backward and bk != base.BK:
            out.append((f"BK {bk}", dataclasses.replace(base, BK=bk)))
    return out


def _raw_launch(wrapped, grid, *args, **meta) -> None:
    # the kernel itself, without `wrap_triton`'s dispatch (which a launcher called inside its
    # operator, as the layers call it, does not pay)
    getattr(wrapped, "kernel", wrapped)[grid](*args, **meta)


def _one_launch_without_barrier(launch_phases, T: int, NPH: int) -> None:
    launch_phases(0, 1 + NPH * T, False)


def probe_row(row, precision: str, record, budget_end: float, timer=do_bench) -> None:
    """Every configuration of ``row``'s split kernels, each passed to ``record`` as a dict; ``timer``
    takes a function and returns its milliseconds (`do_bench`; the tests pass a CPU timer)."""
    cell = row.cell
    dtype = getattr(torch, row.dtype)
    B, T, H, G = row.B, row.T, row.H, GATES[cell]
    module = MODULES[cell]
    args, kwargs, up = _inputs(cell, B, T, H, dtype)
    name = f"{cell}_fwd"
    ref_fwd = getattr(reference, name)(*args, **kwargs, precision=precision)
    ref_bwd = _backward(reference, cell, args, kwargs, ref_fwd, up, precision)
    old_path = _config.KERNEL_PATH
    _config.KERNEL_PATH = "split"
    try:
        bases = {
            bw: _config.launch_config(B, H, H, G, args[0], precision, backward=bw) for bw in (False, True)
        }
    except _config.KernelPathError as e:
        record({"row": row.name, "skipped": str(e)})
        return
    finally:
        _config.KERNEL_PATH = old_path
    for backward in (False, True):
        variants = [*_variants(bases[backward], H, backward), ("no barrier", bases[backward])]
        for label, cfg in variants:
            if time.monotonic() > budget_end:
                record({"row": row.name, "pass": "bwd" if backward else "fwd", "variant": label,
                        "skipped": "out of --budget"})  # fmt: skip
                continue
            why = _fits(cfg, B, H, G, dtype, backward)
            entry = {"row": row.name, "cell": cell, "B": B, "T": T, "H": H, "dtype": row.dtype,
                     "precision": precision, "pass": "bwd" if backward else "fwd", "variant": label,
                     "BB": cfg.BB, "BH": cfg.BH, "warps": cfg.num_warps,
                     "programs": triton.cdiv(H, cfg.BH) * triton.cdiv(B, cfg.BB)}  # fmt: skip
            if why:
                record({**entry, "skipped": why})
                continue
            configs = dict(bases)
            configs[backward] = cfg
            original = module.launch_config, split._phases, split.launch
            module.launch_config = lambda *a, backward=False, **k: configs[backward]  # noqa: B023
            split.launch = _raw_launch
            if label == "no barrier":
                split._phases = _one_launch_without_barrier
            try:
                if backward:
                    fn = lambda: _backward(module, cell, args, kwargs, ref_fwd, up, precision)  # noqa: E731
                    ours, theirs = fn().dgx, ref_bwd.dgx
                else:
                    fn = lambda: getattr(module, name)(*args, **kwargs, precision=precision)  # noqa: E731
                    ours, theirs = fn().y, ref_fwd.y
                ms = timer(fn)
                error = (ours.float() - theirs.float()).abs().max().item()
                record({**entry, "ms": ms, "us_per_step": 1000 * ms / T,
                        "max_abs_error": None if label == "no barrier" else error})  # fmt: skip
            except Exception as e:  # a configuration that does not compile or run is a result too
                record({**entry, "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            finally:
                module.launch_config, split._phases, split.launch = original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/split_probe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="all", help="comma-separated bench row names, or all")
    parser.add_argument("--json", help="write the results here (rewritten after every measurement)")
    parser.add_argument("--budget", type=float, default=240, help="seconds; later configurations are skipped")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or _config.interpreted():
        parser.error("needs a CUDA GPU (and TRITON_INTERPRET unset): the split kernels' barrier")
    by_name = {r.name: r for r in DEFAULT_ROWS}
    names = list(by_name) if args.rows == "all" else args.rows.split(",")
    unknown = [n for n in names if n not in by_name]
    if unknown:
        parser.error(f"--rows: expected names among {', '.join(by_name)}, got {', '.join(unknown)}")
    rows = [by_name[n] for n in names]  # in the order given: the first ones are measured within --budget
    results: list[dict] = []
    props = torch.cuda.get_device_properties(0)
    machine = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
               "triton": triton.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip

    def record(entry: dict) -> None:
        results.append(entry)
        if "skipped" in entry:
            print(f"{entry['row']:18} {entry.get('pass', ''):3} {entry.get('variant', ''):10} skipped: "
                  f"{entry['skipped']}", flush=True)  # fmt: skip
        else:
            err = entry["max_abs_error"]
            print(f"{entry['row']:18} {entry['pass']:3} {entry['variant']:10} BB {entry['BB']:3} "
                  f"BH {entry['BH']:3} warps {entry['warps']} programs {entry['programs']:3}: "
                  f"{entry['ms']:8.3f} ms "
                  f"{entry['us_per_step']:6.2f} µs/step  err {'-' if err is None else f'{err:.1e}'}",
                  flush=True)  # fmt: skip
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": machine, "results": results}, f, indent=1)

    budget_end = time.monotonic() + args.budget
    for row in rows:
        precision = "tf32" if row.dtype == "float32" else "ieee"
        probe_row(row, precision, record, budget_end, lambda fn: do_bench(fn, warmup=10, rep=40))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
