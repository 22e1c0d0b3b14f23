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


def _gradflow(args: argparse.Namespace, console: Console) -> int:
    from pathlib import Path

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from diagnostics.gradflow import GradflowConfig, run_gradflow
    from diagnostics.report import plot, render, save_json

    cfg = GradflowConfig(
        seq_len=args.seq_len,
        cells=tuple(args.cells.split(",")),
        inits=tuple(args.init.split(",")),
        task=args.task,
        loss_at=args.loss_at,
        hidden=args.hidden,
        batch=args.batch,
        num_layers=args.layers,
        bidirectional=args.bidirectional,
        probes=args.probes,
        eval_mode=args.eval,
        device=args.device,
        backend=args.backend,
        seed=args.seed,
    )
    cfg.validate()
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        bar = progress.add_task("gradient flow", total=len(cfg.models()))

        def on_model(name, report):
            if report is None:
                progress.update(bar, description=f"forward + backward: {name}")
            else:
                progress.advance(bar)

        reports = run_gradflow(cfg, on_model)
    render(reports, console)
    out = Path(args.out)
    json_path = save_json(reports, out / "gradflow.json")
    title = f"Gradient flow, {cfg.task} task, T = {cfg.seq_len}, hidden {cfg.hidden} (dot: memory horizon)"
    png_path = plot(reports, out / "gradflow.png", title=title)
    console.print(f"wrote {json_path} and {png_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    flow = sub.add_parser("gradflow", help="how far the gradient travels back through time, per model")
    flow.add_argument("--seq-len", type=int, default=500, help="steps from the first input to the loss")
    flow.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated: rnn, rnn_relu, lstm, gru")
    flow.add_argument(
        "--init", default="default,chrono", help="comma-separated: default, orthogonal, identity, chrono"
    )
    flow.add_argument("--task", default="random", choices=("random", "adding", "copy"))
    flow.add_argument("--loss-at", default="last", choices=("last", "all"), help="where the loss is taken")
    flow.add_argument("--hidden", type=int, default=128)
    flow.add_argument("--batch", type=int, default=32)
    flow.add_argument("--layers", type=int, default=1)
    flow.add_argument("--bidirectional", action="store_true")
    flow.add_argument(
        "--probes", type=int, default=0, help="also estimate ||dh_T/dh_t|| with N random probes"
    )
    flow.add_argument("--eval", action="store_true", help="run the models in eval mode")
    flow.add_argument("--device", default="cpu")
    flow.add_argument("--backend", default="auto", choices=("auto", "triton", "reference"))
    flow.add_argument("--seed", type=int, default=0)
    flow.add_argument("--out", default="runs/gradflow", help="folder for gradflow.json and gradflow.png")
    flow.set_defaults(run=_gradflow)
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
    console = Console()
    try:
        return args.run(args, console)
    except ValueError as err:  # bad arguments: the library's message names them
        console.print(f"[red]error:[/] {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
