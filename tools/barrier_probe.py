"""What one grid barrier costs on this GPU: the split kernels (`kernels/split.py`) meet at one per phase,
so it is the floor of their time per step (`kernels/README.md`, the latency model).

    PYTHONPATH=. python tools/barrier_probe.py [--steps 2000] [--json FILE]

A kernel that only loops and meets at `kernels._tiles.grid_barrier`, timed with
`triton.testing.do_bench` for 1, 8, 32, 64, 96 and 128 programs and one per SM (one program per SM, as
the split kernels run), against the same loop without the barrier. Prints µs per barrier.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl

from kernels._tiles import grid_barrier


@triton.jit(do_not_specialize=["steps"])
def _barrier_loop(counter_ptr, out_ptr, steps, SYNC: tl.constexpr):
    programs = tl.num_programs(0)
    for i in range(steps):
        if SYNC:
            grid_barrier(counter_ptr, (i + 1) * programs)
    tl.store(out_ptr + tl.program_id(0), steps)


def run_loop(programs: int, steps: int, sync: bool, device: str) -> torch.Tensor:
    """One launch of the loop: ``programs`` programs, ``steps`` barriers (or none); each program
    writes ``steps`` when it is done."""
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    out = torch.zeros(programs, dtype=torch.int32, device=device)
    _barrier_loop[(programs,)](counter, out, steps, SYNC=sync, num_warps=4)
    return out


def probe(steps: int = 2000) -> list[dict]:
    """µs per barrier for several grid sizes, measured on the current CUDA device."""
    from triton.testing import do_bench

    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    rows = []
    for programs in sorted({1, 8, 32, 64, 96, 128, sms}):
        if programs > sms:
            continue
        with_barrier = do_bench(lambda p=programs: run_loop(p, steps, True, "cuda"))
        without = do_bench(lambda p=programs: run_loop(p, steps, False, "cuda"))
        rows.append(
            {
                "programs": programs,
                "steps": steps,
                "ms": with_barrier,
                "ms_without": without,
                "us_per_barrier": (with_barrier - without) * 1e3 / steps,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/barrier_probe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    rows = probe(args.steps)
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}: one grid barrier")
    for r in rows:
        per = f"{r['us_per_barrier']:.2f} µs per barrier"
        print(f"{r['programs']:4d} programs: {per} ({r['ms']:.3g} ms for {r['steps']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
