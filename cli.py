"""rnnkit's command line: parses arguments and renders; every number comes from the library.

python cli.py check        # rnnkit's layers against torch.nn on this machine
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table


def _check(args: argparse.Namespace, console: Console) -> int:
    from rnnkit.check import compare_with_torch

    with console.status("running rnnkit and torch.nn forward and backward..."):
        results = compare_with_torch(
            tuple(args.layers.split(",")),
            seq_len=args.seq_len,
            batch=args.batch,
            hidden_size=args.hidden,
            backend=args.backend,
            device=args.device,
        )
    table = Table(title=f"rnnkit vs torch.nn (T={args.seq_len}, B={args.batch}, H={args.hidden}, float32)")
    for col in ("layer", "backend", "output rel. error", "gradient rel. error", "worst gradient", "verdict"):
        table.add_column(col, justify="right" if "error" in col else "left")
    failed = False
    for r in results:
        ok = r.output_error <= args.tolerance and r.grad_error <= args.tolerance
        failed |= not ok
        verdict = "[green]match[/]" if ok else f"[red]differs (> {args.tolerance:g})[/]"
        table.add_row(
            r.layer, r.backend, f"{r.output_error:.2e}", f"{r.grad_error:.2e}", r.worst_grad, verdict
        )
    console.print(table)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="compare rnnkit's layers with torch.nn (outputs and gradients)")
    check.add_argument("--layers", default="RNN,LSTM,GRU", help="comma-separated: RNN,LSTM,GRU")
    check.add_argument("--seq-len", type=int, default=50)
    check.add_argument("--batch", type=int, default=8)
    check.add_argument("--hidden", type=int, default=32)
    check.add_argument("--backend", default="auto", choices=("auto", "triton", "reference"))
    check.add_argument("--device", default="cpu")
    check.add_argument("--tolerance", type=float, default=1e-5, help="largest relative error called a match")
    check.set_defaults(run=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args, Console())


if __name__ == "__main__":
    sys.exit(main())
