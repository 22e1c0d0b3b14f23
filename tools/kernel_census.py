"""Compile design A's kernels (`kernels/tiled.py`) for sm_90 on a grid of forced paths, cells, dtypes
and shapes, with no GPU, and compare two such censuses: what a kernel refactor changed on chip.

    PYTHONPATH=. python tools/kernel_census.py --json after.json [--compare before.json]

Each row: the launch (path, cell, dtype, fp32 precision, B, H, D, proj_size, pass), the kernel, its
registers, spilled bytes, shared memory, SASS instruction count, tensor-core instructions and
`BAR` (bar.sync) count, from `kernels.resources`. With ``--compare``, the rows that got worse
(spills, or registers up by more than 8, or more barriers) are printed, with the total spills of
each census. Run it on a checkout before and after a change (``git worktree add``).
"""

from __future__ import annotations

import argparse
import json

import torch

from kernels import _config
from kernels.resources import cell_launches, compile_resources

SHAPES = (  # dtype, precision, B, H, D: IEEE at and past the resident limit, TF32, bf16, odd H
    (torch.float32, "ieee", 16, 32, 1),
    (torch.float32, "tf32", 64, 64, 2),
    (torch.bfloat16, "ieee", 32, 64, 1),
    (torch.float32, "ieee", 16, 51, 1),
    (torch.float32, "tf32", 64, 256, 1),
)


def cases() -> list[tuple]:
    out = []
    for path in ("resident", "streamed"):
        for cell in ("rnn", "rnn_relu", "lstm", "gru"):
            for dtype, precision, B, H, D in SHAPES:
                if path == "streamed" or H <= 64:
                    out.append((path, cell, dtype, precision, B, H, D, 0))
    out.append(("streamed", "lstm", torch.float32, "tf32", 32, 128, 2, 64))
    out.append(("streamed", "lstm", torch.bfloat16, "ieee", 16, 51, 1, 20))
    return out


def census(grid: list[tuple]) -> list[dict]:
    rows = []
    for path, cell, dtype, precision, B, H, D, proj in grid:
        _config.KERNEL_PATH = path  # this process's own setting: the tool runs alone
        launches = cell_launches(cell, B, H, dtype=dtype, D=D, proj_size=proj, precision=precision)
        for launch, which in zip(launches, ("fwd", "bwd"), strict=True):
            r = compile_resources(launch)
            sass = dict(r.sass)
            rows.append(dict(
                path=path, cell=cell, dtype=str(dtype).removeprefix("torch."), precision=precision, B=B, H=H,
                D=D, proj=proj, which=which, kernel=r.kernel, registers=r.registers,
                spilled=r.spill_stores + r.spill_loads, shared=r.shared, sass=sum(sass.values()),
                tensor_core=r.tensor_core_ops, bar=sass.get("BAR", 0),
            ))  # fmt: skip
            print(*list(rows[-1].values()), flush=True)
    return rows


def _key(row: dict) -> tuple:
    return tuple(row[k] for k in ("path", "cell", "dtype", "precision", "B", "H", "D", "proj", "which"))


def compare(before: list[dict], after: list[dict]) -> None:
    old = {_key(r): r for r in before}
    for row in after:
        was = old.get(_key(row))
        if was is None:
            continue
        spills, registers = row["spilled"] > was["spilled"], row["registers"] > was["registers"] + 8
        if spills or registers or row["bar"] > was["bar"]:
            changes = ", ".join(f"{k} {was[k]} -> {row[k]}" for k in ("registers", "spilled", "bar", "sass"))
            print("worse:", *_key(row), changes)
    print("spilled bytes in all:", sum(r["spilled"] for r in before), "->", sum(r["spilled"] for r in after))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write this census")
    parser.add_argument("--compare", help="an earlier census to compare with")
    parser.add_argument(
        "--limit", type=int, help="compile the first LIMIT cases only (a forward and a backward launch each)"
    )
    args = parser.parse_args()
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit: expected a positive count, got {args.limit}")
    rows = census(cases()[: args.limit])
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    if args.compare:
        with open(args.compare) as f:
            compare(json.load(f), rows)


if __name__ == "__main__":
    main()
