"""rnnkit: train RNN, LSTM and GRU models, see how their gradient flows back through time, and time
rnnkit's layers against torch.nn's.

This file parses the command line and renders what the library computes; every number comes from a
library call that a test can make too.
"""

from __future__ import annotations

import os
import sys

# `train` is a process of its own: it takes torch's opt-in transparent huge pages for its large CPU
# tensors (read once, at torch's first allocation, so before torch is imported; THP_MEM_ALLOC_ENABLE=0
# turns it off). A training step of pixel MNIST's LSTM went 666 -> 537 ms on the CI machine's CPU.
if __name__ == "__main__" and sys.argv[1:2] == ["train"]:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
from contextlib import nullcontext

from rich.console import Console
from rich.table import Table

from rnnkit._checks import ArgumentError, check_output_path


def _check(args: argparse.Namespace, console: Console) -> int:
    from rnnkit.parity import compare_with_torch

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

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from diagnostics.advise import plot_advice, render_advice, save_advice
    from diagnostics.gradflow import GradflowConfig, run_advice, run_gradflow
    from diagnostics.report import plot, render, save_json

    if args.run_dir is not None:
        return _gradflow_run(args, console)
    inits = args.init or ("default" if args.advise else "default,chrono")  # chrono is a remedy there
    cfg = GradflowConfig(
        seq_len=args.seq_len,
        cells=tuple(args.cells.split(",")),
        inits=tuple(inits.split(",")),
        task=args.task,
        loss_at=args.loss_at,
        hidden=args.hidden,
        batch=args.batch,
        num_layers=args.layers,
        bidirectional=args.bidirectional,
        probes=args.probes,
        lyapunov=args.lyapunov,
        eval_mode=args.eval,
        device=args.device,
        backend=args.backend,
        seed=args.seed,
    )
    cfg.validate()
    if args.advise and cfg.loss_at == "all":
        raise ArgumentError(
            "advise", "needs --loss-at last: with a loss at every step, each step's gradient is mostly its "
            "own loss's, and r(k) does not show how far the gradient travels back",
        )  # fmt: skip
    out = check_output_path(args.out or "runs/gradflow", "out", folder=True)  # before the work, not after it
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        bar = progress.add_task("gradient flow", total=len(cfg.models()) * (2 if args.advise else 1))

        def on_model(name, report):
            if report is None:
                progress.update(bar, description=f"forward + backward: {name}")
            else:
                progress.advance(bar)

        reports = run_gradflow(cfg, on_model)
        advices = []
        if args.advise:
            seen = set()

            def on_remedy(name, remedy):
                if name not in seen and seen:
                    progress.advance(bar)
                seen.add(name)
                progress.update(bar, description=f"remedies for {name}: {remedy}")

            advices = run_advice(cfg, on_remedy)
    render(reports, console)
    json_path = save_json(reports, out / "gradflow.json")
    title = f"Gradient flow, {cfg.task} task, T = {cfg.seq_len}, hidden {cfg.hidden}"
    written = [json_path, plot(reports, out / "gradflow.png", title=title)]
    if advices:
        render_advice(advices, console)
        written += [save_advice(advices, out / "advice.json"), plot_advice(advices, out / "advice.png")]
    console.print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


# gradflow options that describe a built-in model: with --run the run's own model is diagnosed
_BUILT_IN_MODEL = ("seq_len", "cells", "init", "task", "loss_at", "hidden", "batch", "layers",
                   "bidirectional", "probes", "backend")  # fmt: skip


def _gradflow_run(args: argparse.Namespace, console: Console) -> int:
    from pathlib import Path

    from diagnostics.advise import plot_advice, render_advice, save_advice
    from diagnostics.report import plot, render, save_json
    from diagnostics.training import diagnose_run, plot_timeline
    from rnnkit._checks import check_at_least, check_device

    defaults = build_parser().parse_args(["gradflow"])
    for name in _BUILT_IN_MODEL:
        if getattr(args, name) != getattr(defaults, name):
            raise ArgumentError(name, "does not apply with --run: the run's own model and data are diagnosed")
    check_at_least("lyapunov", args.lyapunov, 0)
    check_device(args.device)
    out = check_output_path(args.out or str(Path(args.run_dir) / "gradflow"), "out", folder=True)
    with console.status(f"loading {args.run_dir} and measuring its model...") as status:

        def on_remedy(remedy: str) -> None:
            status.update(f"remedies: {remedy}")

        diagnosis = diagnose_run(
            args.run_dir, device=args.device, lyapunov=args.lyapunov, with_advice=args.advise,
            eval_mode=args.eval, seed=args.seed, on_remedy=on_remedy,
        )  # fmt: skip
    render([diagnosis.report], console)
    written = [save_json([diagnosis.report], out / "gradflow.json")]
    written.append(plot([diagnosis.report], out / "gradflow.png", title=f"Gradient flow of {args.run_dir}"))
    if diagnosis.advice is not None:
        render_advice([diagnosis.advice], console)
        written += [save_advice([diagnosis.advice], out / "advice.json"),
                    plot_advice([diagnosis.advice], out / "advice.png")]  # fmt: skip
    if diagnosis.timeline:
        title = f"{args.run_dir}: what train --diagnose recorded ({len(diagnosis.timeline)} records)"
        written.append(plot_timeline(diagnosis.timeline, out / "training.png", title=title))
    else:
        console.print(
            f"{args.run_dir} recorded no diagnostics during training (train --diagnose N records them)"
        )
    console.print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _bench(args: argparse.Namespace, console: Console) -> int:
    import json
    from pathlib import Path

    from rnnkit import bench

    rows = _bench_rows(args.config)
    providers, modes, fp32 = (tuple(v.split(",")) for v in (args.providers, args.modes, args.fp32))
    bench.check_settings(providers, modes, fp32, args.device, args.warmup, args.repeats)
    for option in ("json", "markdown"):
        if getattr(args, option):
            check_output_path(getattr(args, option), option, folder=False)
    header = bench.machine()
    console.print("  ".join(f"[bold]{k}[/] {v}" for k, v in header.items()))

    def save(results):  # after every measurement too: a run cut short keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(bench.to_json(results, header), indent=1))

    results = _bench_measure(args, rows, providers, modes, fp32, save, console)
    for row in rows:
        console.print(_bench_table(row, [r for r in results if r.row == row.name]))
    if any(r.fp32_math == "tf32" for r in results):
        console.print(bench.FP32_NOTE)
    targets = bench.check_targets(results, args.device)
    for line in targets:
        console.print(("[green]" if line.endswith("met") else "[red]") + line + "[/]")
    save(results)
    if args.json:
        console.print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(bench.markdown_report(results, header, targets))
        console.print(f"wrote {args.markdown}")
    return 0


def _bench_rows(config: str):
    from rnnkit import bench

    names = {r.name: r for r in bench.DEFAULT_ROWS}
    wanted = list(names) if config == "all" else config.split(",")
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ArgumentError(
            "config", f"expected row names among {', '.join(names)} or all, got {unknown[0]!r}"
        )
    return tuple(names[n] for n in wanted)


def _bench_measure(args, rows, providers, modes, fp32, save, console: Console):
    # every measurement of the run, under a progress bar
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from rnnkit import bench

    gpu_fp32 = len(fp32) if args.device.startswith("cuda") else 1
    total = sum(gpu_fp32 if r.dtype == "float32" else 1 for r in rows) * len(providers) * len(modes)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    measured = []
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        bar = progress.add_task("timing", total=total)

        def on_result(r):
            progress.update(bar, advance=1, description=f"{r.row} {r.provider} {r.mode}")
            measured.append(r)
            save(measured)

        max_steps = bench.COMPILE_MAX_STEPS if args.compile_max_steps is None else args.compile_max_steps
        return bench.run_bench(
            rows, providers=providers, modes=modes, device=args.device, fp32=fp32, warmup=args.warmup,
            repeats=args.repeats, on_result=on_result, compile_max_steps=max_steps,
        )  # fmt: skip


def _bench_table(row, results) -> Table:
    table = Table(title=f"{row.name}: {row.cell.upper()} B={row.B} T={row.T} I={row.I} H={row.H} "
                  f"layers={row.num_layers} {row.dtype}")  # fmt: skip
    names = ("fp32 math", "provider", "mode", "median ms", "µs/step", "p20–p80", "× torch.nn", "seq/s",
             "peak MiB", "first s")  # fmt: skip
    for col in names:
        table.add_column(col, justify="left" if col in names[:3] else "right")
    for r in results:
        if r.skipped:
            table.add_row(r.fp32_math, r.provider, r.mode, f"[dim]{r.skipped}[/]", "", "", "", "", "", "")
            continue
        ratio = "-" if r.ratio_to_torch is None else f"{r.ratio_to_torch:.2f}"
        peak = "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.4g}"
        table.add_row(
            r.fp32_math, r.provider, r.mode, f"{r.median_ms:.4g}", f"{r.us_per_step:.4g}",
            f"{r.p20_ms:.3g}–{r.p80_ms:.3g}", ratio, f"{r.seq_per_s:.4g}", peak, f"{r.first_call_s:.3g}",
        )  # fmt: skip
    return table


def _resources(args: argparse.Namespace, console: Console) -> int:
    import torch
    from rich.progress import track

    from kernels.resources import SM90_SMS, cell_launches, compile_resources, ptxas_available
    from rnnkit import bench

    if not ptxas_available():
        raise ArgumentError("capability", "Triton's CUDA backend (its ptxas) is not installed here")
    skipped: list[str] = []
    if args.cell or args.B or args.H:
        if not (args.cell and args.B and args.H):
            raise ArgumentError("cell", "--cell, -B and -H go together")
        shapes = [("", args.cell, args.B, args.H, args.dtype)]
    else:
        rows, left_out = bench.kernel_rows()
        shapes = [(r.name, r.cell, r.B, r.H, r.dtype) for r in rows]
        skipped = [f"{r.name} ({r.dtype})" for r in left_out]
    table = Table(title=f"Recurrent kernels compiled for sm_{args.capability} (Triton and ptxas, no GPU)")
    columns = ("shape", "cell", "B", "H", "dtype", "kernel", "BB/BH", "warps", "regs", "spills (B)", "smem",
               "programs", "per SM", "co-resident", "tensor-core ops")  # fmt: skip
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("shape", "cell", "dtype", "kernel") else "right"
        )
    work = [
        (shape, launch)
        for shape in shapes
        for launch in cell_launches(
            shape[1],
            shape[2],
            shape[3],
            dtype=getattr(torch, shape[4]),
            proj_size=args.proj_size,
            precision=args.precision,
        )
    ]
    for (name, cell, B, H, dtype), launch in track(work, description="compiling", transient=True):
        r = compile_resources(launch, args.capability)
        m = dict(r.meta)
        table.add_row(
            name, cell, str(B), str(H), dtype, r.kernel.strip("_"), f"{m['BB']}/{m['BH']}", str(r.num_warps),
            str(r.registers), f"[red]{r.spill_stores}/{r.spill_loads}[/]" if r.spills else "0",
            f"{r.shared // 1024} KiB", str(r.programs), str(r.per_sm),
            "yes" if r.coresident(args.sms or SM90_SMS) else "[red]no[/]", str(r.tensor_core_ops),
        )  # fmt: skip
    console.print(table)
    console.print(
        f"fp32 products: {args.precision}. Co-resident: every program of the launch on the device's SMs at "
        "once, which the split kernels' barrier needs (the other kernels do not wait for each other)."
    )
    if skipped:
        console.print(f"Not compiled: {', '.join(skipped)}: the reference runs float64, never the kernels.")
    return 0


def _train_table(title: str, rows: list[dict], metric: str) -> Table:
    table = Table(title=title)
    known = ("weights", "epoch", "train_loss", f"train_{metric}", "val_loss", f"val_{metric}", "test_loss",
             f"test_{metric}", "test_examples", "seconds")  # fmt: skip
    keys = [k for k in known if any(k in r for r in rows)]
    keys = list(dict.fromkeys(keys))
    for k in keys:
        table.add_column(k.replace("_", " "), justify="right")
    for r in rows:
        table.add_row(
            *("" if k not in r else f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
        )
    return table


def _test_rows(result: dict, epochs: list[dict], metric: str) -> list[dict]:
    """The rows of train's test table: the last epoch's weights, with that epoch's validation score
    beside their test score, then the best validation epoch's weights where they differ."""
    key = f"val_{metric}"
    last_val = {key: epochs[-1][key]} if epochs and key in epochs[-1] else {}
    best = result.get("best")
    chosen = [{"weights": "best validation", **best}] if best else []
    return [{"weights": "last", **last_val, **result}, *chosen]


def _train_sine(plan, console: Console, quiet: bool) -> int:
    from rnnkit.train import Run, train_sine
    from rnnkit.train.run import plot_curves
    from rnnkit.train.sine import compare_plot

    results, runs = {}, {}
    for cfg in plan.sine:
        out = plan.out / cfg.cell if len(plan.sine) > 1 else plan.out
        run = Run(out, None if plan.resume else {"task": "sine", **vars(cfg)})
        console.print(f"[bold]sine[/] {cfg.cell}: {run.out}")

        def on_epoch(record, cell=cfg.cell):
            if quiet:
                console.print(f"{cell} epoch {record['epoch']}: train {record['train_loss']:.4g} "
                              f"test {record['test_loss']:.4g}")  # fmt: skip

        with (
            console.status(f"training {cfg.cell} with LBFGS (one step per epoch)...", spinner="dots")
            if not quiet
            else nullcontext()
        ):
            results[cfg.cell] = train_sine(cfg, run, resume=plan.resume, on_epoch=on_epoch)
        runs[cfg.cell] = run
        plot_curves(run, "loss")
        console.print(_train_table(f"sine, {cfg.cell}", run.records("epoch"), "loss"))
        if results[cfg.cell]["status"] == "interrupted":
            console.print(f"[yellow]interrupted[/]; resume with: python cli.py train --resume {run.out}")
            return 130
    if len(plan.sine) > 1:
        path = compare_plot(plan.out / "compare.png", results, runs, 999)
        console.print(f"wrote {path}")
    final = Table(title="sine: final")
    for col in ("cell", "train MSE", "test MSE"):
        final.add_column(col, justify="right")
    for cell, r in results.items():
        final.add_row(cell, f"{r['train_loss']:.4g}", f"{r['test_loss']:.4g}")
    console.print(final)
    return 0


# the options of `train` that are settings of the run (the rest: how the command runs)
_TRAIN_SETTINGS = (
    "task", "resume", "out", "cell", "epochs", "batch_size", "lr", "optimizer", "clip", "hidden", "layers",
    "seed", "device", "backend", "data_dir", "download", "limit", "checkpoint_every", "log_every", "diagnose",
    "compile", "val_fraction", "dataset", "pixel", "permuted", "max_len", "seq_len", "steps_per_epoch",
    "compare", "window", "noise", "schedule", "dropout", "weight_drop", "zoneout", "bidirectional", "init",
    "pool",
)  # fmt: skip


def _train(args: argparse.Namespace, console: Console) -> int:
    import json
    import time as _time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from diagnostics.training import GradientFlowObserver
    from kernels.cpu import keep_freed_memory
    from rnnkit.train import Progress as LoopProgress
    from rnnkit.train import Run, fit, make_task, plan_training
    from rnnkit.train.run import plot_curves

    plan = plan_training({k: getattr(args, k) for k in _TRAIN_SETTINGS})  # checks everything, writes nothing
    keep_freed_memory()  # this process trains: freed CPU buffers stay mapped for the next step
    if plan.task == "sine":
        return _train_sine(plan, console, bool(args.quiet))
    cfg = plan.config
    task = make_task(cfg.task)
    facts = task.prepare(cfg, console.print)
    run = Run(plan.out, None if plan.resume else dict(vars(cfg)))
    drops = (("dropout", cfg.dropout), ("weight drop", cfg.weight_drop), ("zoneout", cfg.zoneout))
    dropped = "".join(f", {name} {p}" for name, p in drops if p)
    console.print(f"[bold]{cfg.task}[/] {cfg.cell} hidden {cfg.hidden} × {cfg.layers} layers, "
                  f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr}{dropped} → {run.out}")  # fmt: skip
    console.print("  ".join(f"{k}: {v}" for k, v in facts.items()))
    if getattr(task, "permutation", None) is not None:
        (run.out / "permutation.json").write_text(json.dumps(task.permutation.tolist()))
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True, disable=bool(args.quiet)) as bars:
        epoch_bar = bars.add_task("epochs", total=cfg.epochs, stats="")
        batch_bar = bars.add_task("batches", total=1, stats="")
        clock = {"t": _time.perf_counter(), "n": 0}

        def on_epoch_start(epoch, batches):
            bars.update(epoch_bar, completed=epoch, description=f"epoch {epoch + 1}/{cfg.epochs}")
            bars.reset(batch_bar, total=batches)
            clock.update(t=_time.perf_counter(), n=0)

        def on_step(record):
            clock["n"] += 1
            rate = clock["n"] / max(_time.perf_counter() - clock["t"], 1e-9)
            metric = record.get(task.metric)
            stats = f"loss {record['loss']:.4f}  {task.metric} {metric:.4f}  {rate:.1f} steps/s"
            bars.update(batch_bar, advance=1, stats=stats)

        def on_epoch_end(record):
            bars.update(epoch_bar, completed=record["epoch"])
            line = "  ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float))
            console.print(f"epoch {record['epoch']}: {line}")

        observer = GradientFlowObserver(run.log, every=cfg.diagnose) if cfg.diagnose else None
        result = fit(
            task, cfg, run, resume=plan.resume, progress=LoopProgress(on_epoch_start, on_step, on_epoch_end),
            on_step=observer,
        )  # fmt: skip
    plot_curves(run, task.metric)
    console.print(_train_table(f"{cfg.task}: epochs", run.records("epoch"), task.metric))
    if result["status"] == "interrupted":
        console.print(f"[yellow]interrupted at step {result['step']}[/]; checkpoint saved. Resume: "
                      f"python cli.py train --resume {run.out}")  # fmt: skip
        return 130
    best = result.get("best")
    console.print(_train_table(f"{cfg.task}: test", _test_rows(result, run.records("epoch"), task.metric),
                               task.metric))  # fmt: skip
    if best:
        console.print(f"epoch {best['epoch']} had the best validation {task.metric}: its weights are tested "
                      "in the second row and kept in checkpoint.pt under \"best\"")  # fmt: skip
    return 0


def _results(args: argparse.Namespace, console: Console) -> int:
    from pathlib import Path

    from rnnkit.bench import machine
    from rnnkit.train.results import keep_records, repo_path, results_markdown

    if args.markdown:
        check_output_path(args.markdown, "markdown", folder=False)
    notes = ""
    if args.notes:
        try:
            notes = Path(args.notes).read_text()
        except OSError as err:
            raise ArgumentError("notes", f"cannot read {args.notes}: {err.strerror}") from None
    if not args.markdown:
        console.print(results_markdown([Path(p) for p in args.runs], machine()) + notes)
        return 0
    path = Path(args.markdown)
    # the records go into the repository beside the file, and the file is written from them
    kept_in = path.parent / "docs" / "results"
    kept = keep_records([Path(p) for p in args.runs], kept_in)
    section = results_markdown(kept, machine(), link_from=path.parent)
    runs = " ".join(repo_path(str(p)) for p in kept)
    with_notes = f" --notes {args.notes}" if args.notes else ""
    head = (f"# Results\n\nWritten by `python cli.py results {runs} --markdown {args.markdown}{with_notes}` "
            "from the runs' records, kept in the repository (config, machine, metrics and curves; not the "
            "checkpoints); each run's learning curves are linked from its row.\n\n")  # fmt: skip
    path.write_text(head + section + ("\n" + notes if notes else ""))
    console.print(f"wrote {path} from the records of {len(kept)} runs, kept in {kept_in}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line on stderr, as every other error (exit 2)
        _error(f"{self.prog}: {message}")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnkit", description=__doc__.split("\n\n")[0].replace("\n", " "))
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_gradflow_parser, _train_parser, _results_parser, _bench_parser, _resources_parser,
                _check_parser):  # fmt: skip
        add(sub)
    return parser


def _gradflow_parser(sub) -> None:
    """`gradflow`: the gradient flow of built-in models, or of a training run (--run)."""
    from rnnkit import backends

    flow = sub.add_parser("gradflow", help="how far the gradient travels back through time, per model")
    flow.add_argument("--seq-len", type=int, default=500, help="steps from the first input to the loss")
    flow.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated: rnn, rnn_relu, lstm, gru")
    flow.add_argument(
        "--init",
        help="comma-separated: default, orthogonal, identity, chrono (default: default,chrono; "
        "with --advise: default)",
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
    flow.add_argument(
        "--lyapunov", type=int, default=16, help="the top K Lyapunov exponents of each layer (0: off)"
    )
    flow.add_argument(
        "--advise",
        action="store_true",
        help="also try the standard remedies on the same batch and loss; recommend what the numbers support",
    )
    flow.add_argument(
        "--run",
        dest="run_dir",
        metavar="RUN_DIR",
        help="diagnose the trained model of a training run (its checkpoint and data)",
    )
    flow.add_argument("--eval", action="store_true", help="run the models in eval mode")
    flow.add_argument("--device", default="cpu")
    flow.add_argument("--backend", default="auto", choices=backends.NAMES)
    flow.add_argument("--seed", type=int, default=0)
    flow.add_argument(
        "--out",
        help="folder for gradflow.json and gradflow.png (default runs/gradflow; RUN_DIR/gradflow with --run)",
    )
    flow.set_defaults(run=_gradflow)


def _train_parser(sub) -> None:
    """`train`: the task, the model and the loop; no defaults here (see below)."""
    from rnnkit import backends
    from rnnkit.train import TASK_DEFAULTS
    from rnnkit.train.config import VARIANT_DEFAULTS
    from rnnkit.train.loop import SCHEDULES

    def flags(settings):
        return ", ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in settings.items()
        )

    defaults = "\n".join(
        [f"  {task:7} {flags(settings)}" for task, settings in TASK_DEFAULTS.items()]
        + [f"  {task} --{option}: {flags(settings)}" for (task, option), settings in VARIANT_DEFAULTS.items()]
    )
    t = sub.add_parser(
        "train", help="train on sine, mnist, imdb, adding or copy; checkpoints, resume",
        description="Train a model on one task; a run folder keeps its settings, metrics, plots and "
        "checkpoints, and --resume continues it exactly where it stopped.",
        epilog=f"each task's defaults (where an option is not given):\n{defaults}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    # no defaults here: the library's (rnnkit.train.config) apply to what is not given, and a resumed
    # run refuses what it would not use
    t.add_argument("--task", choices=("sine", "mnist", "imdb", "adding", "copy"), help="default: sine")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR where it stopped")
    t.add_argument("--out", help="the run directory (default runs/<task>-<time>)")
    t.add_argument("--cell", choices=("rnn", "rnn_relu", "lstm", "gru"), help="default: lstm")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--optimizer", choices=("adam", "sgd", "lbfgs"), help="default: adam")
    t.add_argument("--clip", type=float, help="clip the gradient norm to this (0: no clipping)")
    t.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="the learning rate by step: constant; cosine from --lr to 0; late-cosine: constant for three "
        "quarters of the steps, then a cosine to 0",
    )
    t.add_argument(
        "--dropout", type=float, help="on the embedding, between layers and before the head (training only)"
    )
    t.add_argument(
        "--weight-drop",
        dest="weight_drop",
        type=float,
        help="DropConnect on the recurrent weights: each weight_hh element zeroed with this probability, one "
        "mask per batch (training only)",
    )
    t.add_argument(
        "--zoneout",
        type=float,
        help="LSTM: zoneout of the cell state, each unit keeping its previous c at a step with this "
        "probability (training; the expectation at inference)",
    )
    t.add_argument(
        "--bidirectional", action=argparse.BooleanOptionalAction, default=None, help="both directions"
    )
    t.add_argument(
        "--init",
        choices=("default", "orthogonal", "identity", "chrono"),
        help="the recurrent layers' initialisation",
    )
    t.add_argument("--pool", choices=("last", "max", "mean"), help="mnist, imdb: what the head reads")
    t.add_argument("--hidden", type=int)
    t.add_argument("--layers", type=int)
    t.add_argument("--seed", type=int, help="default: 0")
    t.add_argument("--device", help="cpu, cuda or cuda:N (default: cpu)")
    t.add_argument("--backend", choices=backends.NAMES, help="default: auto")
    t.add_argument("--data-dir", dest="data_dir", help="where the dataset files are (default: the cache)")
    t.add_argument(
        "--no-download", dest="download", action="store_const", const=False, help="never fetch data"
    )
    t.add_argument(
        "--limit", type=int, help="at most this many examples per split, a seeded stratified subset"
    )
    t.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, help="steps (default 0: epochs)")
    t.add_argument("--log-every", dest="log_every", type=int, help="default: 10")
    t.add_argument(
        "--diagnose", type=int, help="record the gradient-flow profile every N steps (default 0: off)"
    )
    t.add_argument(
        "--compile",
        action="store_const",
        const=True,
        help="train through torch.compile(model) (not for sine)",
    )
    t.add_argument("--quiet", action="store_const", const=True, help="log lines instead of progress bars")
    t.add_argument("--val-fraction", dest="val_fraction", type=float)
    t.add_argument("--dataset", choices=("mnist", "fashion-mnist"), help="mnist task (default: mnist)")
    t.add_argument("--pixel", action="store_const", const=True, help="mnist: 784 steps of one pixel")
    t.add_argument(
        "--permuted", action="store_const", const=True, help="mnist: pixels in a fixed random order"
    )
    t.add_argument("--max-len", dest="max_len", type=int, help="imdb: tokens per review (default: 200)")
    t.add_argument("--seq-len", dest="seq_len", type=int, help="adding, copy: the sequence length")
    t.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int, help="adding, copy (default: 100)")
    t.add_argument("--compare", help="sine: comma-separated cells trained on the same data, e.g. rnn,lstm")
    t.add_argument("--window", type=int, help="sine: train on windows of this many steps (default 0: whole)")
    t.add_argument("--noise", type=float, help="sine: Gaussian noise on the waves (default: 0)")
    t.set_defaults(run=_train)


def _results_parser(sub) -> None:
    """`results`: finished runs as Markdown."""
    res = sub.add_parser("results", help="summarize finished training runs as Markdown")
    res.add_argument("runs", nargs="+", help="run directories")
    res.add_argument(
        "--markdown",
        help="write the whole file (e.g. RESULTS.md) from copies of the runs' records, which go to "
        "docs/results/<name>/ beside it (config, machine, metrics, curves; not the checkpoints)",
    )
    res.add_argument("--notes", help="a Markdown file to put after the tables (what was tried, what helped)")
    res.set_defaults(run=_results)


def _bench_parser(sub) -> None:
    """`bench`: rows, providers, modes and where the results go."""
    b = sub.add_parser(
        "bench", help="time torch.nn, rnnkit and a naive cell loop (eager, compiled) side by side"
    )
    b.add_argument("--config", default="all", help="comma-separated row names, or all")
    b.add_argument(
        "--providers", default="torch.nn,rnnkit-triton,rnnkit-cpu,naive-cell-loop,compiled-cell-loop"
    )
    b.add_argument(
        "--modes",
        default="fwd,fwd+bwd,fwd+bwd+record",
        help="fwd (inference), fwd+bwd (a training step), fwd+bwd+record (with every step's gradient "
        "recorded, rnnkit only)",
    )
    b.add_argument("--device", default="cuda" if _cuda() else "cpu")
    b.add_argument(
        "--fp32",
        default="tf32,ieee",
        help="GPU fp32 rows: tf32 (torch's defaults: TF32 in cuDNN's RNN and in rnnkit's recurrence), "
        "ieee (TF32 off for both), or both, each a pass of every provider",
    )
    b.add_argument("--warmup", type=int, default=1, help="CPU: untimed runs first")
    b.add_argument("--repeats", type=int, default=5, help="CPU: timed runs")
    b.add_argument(
        "--compile-max-steps",
        type=int,
        default=None,
        help="the compiled cell loop runs on rows of at most this many T*layers steps, as torch.compile "
        "unrolls them (default: rnnkit.bench.COMPILE_MAX_STEPS)",
    )
    b.add_argument("--json", help="write the results as JSON here")
    b.add_argument("--markdown", help="write the results as a Markdown report here (machine, table, targets)")
    b.set_defaults(run=_bench)


def _resources_parser(sub) -> None:
    """`resources`: each kernel compiled for a GPU, read without one."""
    res = sub.add_parser(
        "resources", help="registers, spills, shared memory and tensor-core use of every kernel, compiled "
        "for an H100/H200 without a GPU",
    )  # fmt: skip
    res.add_argument("--cell", choices=("rnn", "rnn_relu", "lstm", "gru"))
    res.add_argument("-B", type=int, help="batch (with --cell and -H; default: the benchmark's shapes)")
    res.add_argument("-H", type=int, help="hidden size")
    res.add_argument("--proj-size", dest="proj_size", type=int, default=0)
    res.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    res.add_argument("--capability", type=int, default=90, help="CUDA compute capability (90: H100, H200)")
    res.add_argument(
        "--precision", default="tf32", choices=("tf32", "ieee"), help="fp32 products (default tf32)"
    )
    res.add_argument("--sms", type=int, help="the device's SMs, for co-residency (default: 132)")
    res.set_defaults(run=_resources)


def _check_parser(sub) -> None:
    """`check`: rnnkit against torch.nn."""
    from rnnkit import backends

    check = sub.add_parser("check", help="compare rnnkit's layers with torch.nn (outputs and gradients)")
    check.add_argument("--layers", default="RNN,LSTM,GRU", help="comma-separated: RNN,LSTM,GRU")
    check.add_argument("--seq-len", type=int, default=50)
    check.add_argument("--batch", type=int, default=8)
    check.add_argument("--hidden", type=int, default=32)
    check.add_argument("--backend", default="auto", choices=backends.NAMES)
    check.add_argument("--device", default="cpu")
    check.add_argument("--tolerance", type=float, default=1e-5, help="largest relative error called a match")
    check.set_defaults(run=_check)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# an ArgumentError's setting -> the option that sets it, where the two are not simply "--" + the name
_OPTION_OF = {"download": "--no-download", "resume": "--resume", "runs": "RUN_DIR", "inits": "--init",
              "num_layers": "--layers", "hidden_size": "--hidden", "layers_names": "--layers"}  # fmt: skip


def _option(argument: str) -> str:
    return _OPTION_OF.get(argument, "--" + argument.replace("_", "-"))


def _error(message: str) -> None:
    # one line on stderr, whatever the terminal's width
    print("error: " + " ".join(str(message).split()), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input ends in one line on stderr naming the argument (exit 2), before
    any work starts or any file is written; nothing reaches the user as a traceback
    (``RNNKIT_DEBUG=1`` shows one for an unexpected error)."""
    import os

    from rnnkit.backends import BackendUnavailableError
    from rnnkit.datasets import DatasetError
    from rnnkit.train import TrainingDivergedError

    args = build_parser().parse_args(argv)
    console = Console(quiet=int(os.environ.get("RANK", "0")) > 0)  # under torchrun, rank 0 speaks
    try:
        return args.run(args, console)
    except ArgumentError as err:  # a bad setting: named as the option that sets it
        _error(f"{_option(err.argument)}: {err.detail}")
        return 2
    except (ValueError, TypeError, BackendUnavailableError) as err:  # the library names the argument
        _error(err)
        return 2
    except DatasetError as err:
        _error(f"data: {err}")
        return 2
    except TrainingDivergedError as err:
        _error(f"diverged: {err}")
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as err:
        if os.environ.get("RNNKIT_DEBUG"):
            raise
        _error(
            f"{type(err).__name__}: {err} (not a usage error: a bug in rnnkit? RNNKIT_DEBUG=1 shows where)"
        )
        return 1


if __name__ == "__main__":
    import torch

    # denormal floats flushed to zero (FTZ/DAZ) in this process, set before torch starts its worker
    # threads so that they inherit it: the gradient of a long sequence decays below 1.2e-38, where an
    # Intel Xeon's arithmetic ran 7.5x slower (`kernels.reference.flush_denormals`, which does the same
    # for the calling thread of any program)
    torch.set_flush_denormal(True)
    sys.exit(main())
