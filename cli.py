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


def _bench(args: argparse.Namespace, console: Console) -> int:
    import json
    from pathlib import Path

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from rnnkit import bench

    names = {r.name: r for r in bench.DEFAULT_ROWS}
    wanted = list(names) if args.config == "all" else args.config.split(",")
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(
            f"config: unknown rows {', '.join(unknown)}; expected names among {', '.join(names)}"
        )
    rows = tuple(names[n] for n in wanted)
    providers, modes = tuple(args.providers.split(",")), tuple(args.modes.split(","))
    header = bench.machine()
    console.print("  ".join(f"[bold]{k}[/] {v}" for k, v in header.items()))
    total = len(rows) * len(providers) * len(modes)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        bar = progress.add_task("timing", total=total)

        def on_result(r):
            progress.update(bar, advance=1, description=f"{r.row} {r.provider} {r.mode}")

        results = bench.run_bench(
            rows, providers=providers, modes=modes, device=args.device,
            warmup=args.warmup, repeats=args.repeats, on_result=on_result,
        )  # fmt: skip
    for row in rows:
        table = Table(title=f"{row.name}: {row.cell.upper()} B={row.B} T={row.T} I={row.I} H={row.H} "
                      f"layers={row.num_layers} {row.dtype}")  # fmt: skip
        for col in ("provider", "mode", "median ms", "p20–p80", "× torch.nn", "seq/s", "peak MiB"):
            table.add_column(col, justify="left" if col in ("provider", "mode") else "right")
        for r in (r for r in results if r.row == row.name):
            if r.skipped:
                table.add_row(r.provider, r.mode, f"[dim]{r.skipped}[/]", "", "", "", "")
                continue
            ratio = "-" if r.ratio_to_torch is None else f"{r.ratio_to_torch:.2f}"
            peak = "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.4g}"
            spread = f"{r.p20_ms:.3g}–{r.p80_ms:.3g}"
            table.add_row(r.provider, r.mode, f"{r.median_ms:.4g}", spread, ratio, f"{r.seq_per_s:.4g}", peak)
        console.print(table)
    targets = bench.check_targets(results, args.device)
    for line in targets:
        console.print(("[green]" if line.endswith("met") else "[red]") + line + "[/]")
    if args.json:
        Path(args.json).write_text(json.dumps(bench.to_json(results, header), indent=1))
        console.print(f"wrote {args.json}")
    if args.markdown:
        path = Path(args.markdown)
        section = bench.to_markdown(results, header)
        if targets:
            section += "\nTargets:\n\n" + "".join(f"- {line}\n" for line in targets)
        existing = (
            path.read_text() if path.exists() else "# Benchmarks\n\nWritten by `python cli.py bench`.\n"
        )
        path.write_text(existing.rstrip("\n") + "\n\n" + section)
        console.print(f"appended to {path}")
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
    b = sub.add_parser("bench", help="time torch.nn, rnnkit and a naive cell loop side by side")
    b.add_argument("--config", default="all", help="comma-separated row names, or all")
    b.add_argument("--providers", default="torch.nn,rnnkit-triton,rnnkit-reference,naive-cell-loop")
    b.add_argument("--modes", default="fwd,fwd+bwd")
    b.add_argument("--device", default="cuda" if _cuda() else "cpu")
    b.add_argument("--warmup", type=int, default=1, help="CPU: untimed runs first")
    b.add_argument("--repeats", type=int, default=5, help="CPU: timed runs")
    b.add_argument("--json", help="write the results as JSON here")
    b.add_argument("--markdown", help="append a Markdown section (machine header, table, targets) here")
    b.set_defaults(run=_bench)
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


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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
