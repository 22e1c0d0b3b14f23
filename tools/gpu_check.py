"""The GPU check: what to run first whenever a GPU machine is at hand, in one command.

    PYTHONPATH=. python tools/gpu_check.py [--out DIR] [--data-dir MNIST_DIR]

Five stages, each with its own time limit (about 6 minutes in all on one H100/H200), each logging to
its own file in one folder (default ``runs/gpu-check-<time>``):

1. tests: ``pytest -m "cuda or interpreter"`` (the interpreter-marked kernel tests run natively on
   a GPU: there the split kernels meet at their grid barrier), in parallel where pytest-xdist is
   installed, each test limited where pytest-timeout is (a kernel that never returns fails one test);
2. barrier: ``tools/barrier_probe.py``, what one grid barrier costs (``barrier.json``);
3. bench: ``cli.py bench`` for torch.nn and rnnkit-triton on every row, fp32 rows under torch's
   defaults (TF32) and in IEEE fp32 (``bench.json``, rewritten after every measurement, so a stage
   cut short keeps what it measured; ``bench.md``);
4. probe: ``tools/split_probe.py``, the split kernels' µs per step at their block sizes and
   neighbours, and without the barrier (``probe.json``);
5. train: one epoch of ``cli.py train --task mnist --device cuda --backend triton`` (needs the MNIST
   files: ``--data-dir``, else the cache; skipped, and said so, where there are none).

Then it prints a summary (also ``summary.md``): each stage's outcome, the failures by name, the
barrier's cost, the ratios to torch.nn, the epoch's test accuracy. The exit status is 0 when every
stage that ran passed.
``--pack FILE`` also writes the folder as one .tar.gz (put it in $OUT: a GPU machine sends back at
most 8 files, and the folder holds more). ``--pytest-args``, ``--bench-args`` and ``--train-args``
replace a stage's arguments (a CPU test runs the script on tiny settings); ``--skip`` leaves stages out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("tests", "barrier", "bench", "probe", "train")
LIMITS_S = {"tests": 150, "barrier": 30, "bench": 120, "probe": 150, "train": 60}


@dataclass
class Stage:
    name: str
    command: list[str]
    log: Path
    seconds: float = 0.0
    status: str = "not run"  # passed, failed (exit N), timed out after N s, skipped: why
    details: list[str] = field(default_factory=list)


def _plugins() -> list[str]:
    # pytest-xdist: the tests in parallel; pytest-timeout: a test whose kernel never returns fails alone
    import importlib.util

    args = []
    if importlib.util.find_spec("xdist"):
        args += ["-n", str(min(14, os.cpu_count() or 1))]
    if importlib.util.find_spec("pytest_timeout"):
        args += ["--timeout", "120"]
    return args


def _mnist_dir(given: str | None) -> Path | None:
    candidates = [Path(given)] if given else [ROOT / "shared/data/mnist", ROOT.parent / "shared/data/mnist"]
    return next((p for p in candidates if (p / "t10k-labels-idx1-ubyte.gz").is_file()), None)


def _commands(args: argparse.Namespace, out: Path) -> dict[str, list[str]]:
    py = sys.executable
    pytest_args = shlex.split(args.pytest_args) if args.pytest_args is not None else [
        "-m", "cuda or interpreter", *_plugins(), "-q", "-p", "no:cacheprovider", "-rfE",
    ]  # fmt: skip
    bench_args = shlex.split(args.bench_args) if args.bench_args is not None else [
        "--providers", "torch.nn,rnnkit-triton", "--modes", "fwd,fwd+bwd,fwd+bwd+record",
        "--fp32", "tf32,ieee",
    ]  # fmt: skip
    train_args = shlex.split(args.train_args) if args.train_args is not None else [
        "--task", "mnist", "--device", "cuda", "--backend", "triton", "--epochs", "1", "--no-download",
        "--quiet",
    ]  # fmt: skip
    probe_args = ["--budget", str(max(10, args.probe_limit - 30))]  # its own budget, inside the stage's limit
    data = _mnist_dir(args.data_dir)
    return {
        "tests": [py, "-m", "pytest", *pytest_args],
        "barrier": [py, "tools/barrier_probe.py", "--json", str(out / "barrier.json")],
        "probe": [py, "tools/split_probe.py", *probe_args, "--json", str(out / "probe.json")],
        "bench": [
            py,
            "cli.py",
            "bench",
            *bench_args,
            "--json",
            str(out / "bench.json"),
            "--markdown",
            str(out / "bench.md"),
        ],
        "train": [py, "cli.py", "train", *train_args, "--out", str(out / "train")]
        + (["--data-dir", str(data)] if data and args.train_args is None else []),
    }


def _run(stage: Stage, limit: float) -> None:
    # the stage in a session of its own: past its limit every process of it goes (xdist's workers too)
    start = time.monotonic()
    with open(stage.log, "w") as log:
        log.write("$ " + shlex.join(stage.command) + "\n\n")
        log.flush()
        process = subprocess.Popen(
            stage.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            code = process.wait(timeout=limit)
            stage.status = "passed" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            stage.status = f"timed out after {limit:.0f} s"
    stage.seconds = time.monotonic() - start


def _summarize_tests(stage: Stage, out: Path) -> None:
    text = stage.log.read_text()
    counts = re.findall(
        r"^=*\s*(\d+ (?:passed|failed|skipped|error|errors|xfailed|deselected).*?)\s*=*$", text, re.M
    )
    if counts:
        stage.details.append(counts[-1].strip("= "))
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)))
    stage.details += [f"FAILED {name}" for name in failed]


def _summarize_bench(stage: Stage, out: Path) -> None:
    path = out / "bench.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    stage.details.append(", ".join(f"{k} {v}" for k, v in data["machine"].items()))
    for r in data["results"]:
        if r["provider"] == "torch.nn":
            continue
        if r["skipped"]:
            stage.details.append(f"{r['row']} {r['fp32_math']} {r['provider']} {r['mode']}: {r['skipped']}")
            continue
        stage.details.append(
            f"{r['row']} {r['dtype']} {r['fp32_math']} {r['provider']} {r['mode']}: {r['median_ms']:.3g} ms, "
            f"{r['ratio_to_torch']:.2f}× torch.nn"
        )


def _summarize_barrier(stage: Stage, out: Path) -> None:
    path = out / "barrier.json"
    if path.is_file():
        stage.details += [f"{r['programs']} programs: {r['us_per_barrier']:.2f} µs per barrier"
                          for r in json.loads(path.read_text())]  # fmt: skip


def _summarize_probe(stage: Stage, out: Path) -> None:
    path = out / "probe.json"
    if not path.is_file():
        return
    measured: dict[tuple[str, str], dict[str, float]] = {}
    for r in json.loads(path.read_text())["results"]:
        if "us_per_step" in r:
            measured.setdefault((r["row"], r["pass"]), {})[r["variant"]] = r["us_per_step"]
    for (row, pass_), times in measured.items():
        if "chosen" not in times:
            continue
        rest = {k: v for k, v in times.items() if k != "no barrier"}
        best = min(rest, key=rest.get)
        stage.details.append(
            f"{row} {pass_}: {times['chosen']:.2f} µs/step, {times.get('no barrier', float('nan')):.2f} "
            f"without the barrier, fastest {best} {rest[best]:.2f}"
        )


def _summarize_train(stage: Stage, out: Path) -> None:
    metrics = out / "train" / "metrics.jsonl"
    if not metrics.is_file():
        return
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    for row in rows:
        shown = {
            k: row[k] for k in ("epoch", "train_loss", "val_accuracy", "test_accuracy", "seconds") if k in row
        }
        if "test_accuracy" in shown or "val_accuracy" in shown:
            stage.details.append(
                ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
            )


SUMMARIES = {"tests": _summarize_tests, "barrier": _summarize_barrier, "bench": _summarize_bench,
             "probe": _summarize_probe, "train": _summarize_train}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="the log folder (default runs/gpu-check-<time>)")
    parser.add_argument("--data-dir", help="the MNIST files for the train stage")
    parser.add_argument("--pack", help="also write the folder as one .tar.gz (e.g. $OUT/gpu-check.tar.gz)")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated stages to leave out ({', '.join(STAGES)})"
    )
    parser.add_argument("--pytest-args", help="replace the tests stage's pytest arguments")
    parser.add_argument("--bench-args", help="replace the bench stage's arguments (--json/--markdown stay)")
    parser.add_argument("--train-args", help="replace the train stage's arguments (--out stays)")
    for name in STAGES:
        parser.add_argument(f"--{name}-limit", type=float, default=LIMITS_S[name], help=f"seconds for {name}")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(STAGES):
        parser.error(
            f"--skip: expected names among {', '.join(STAGES)}, got {', '.join(sorted(skip - set(STAGES)))}"
        )
    out = Path(args.out or ROOT / "runs" / time.strftime("gpu-check-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    commands = _commands(args, out)
    stages = []
    for name in STAGES:
        stage = Stage(name, commands[name], out / f"{name}.log")
        stages.append(stage)
        if name in skip:
            stage.status = "skipped: --skip"
            continue
        if name == "train" and "--data-dir" not in stage.command and args.train_args is None:
            stage.status = "skipped: no MNIST files (--data-dir, or shared/data/mnist)"
            continue
        print(f"[gpu-check] {name}: {shlex.join(stage.command)}", flush=True)
        _run(stage, getattr(args, f"{name}_limit"))
        SUMMARIES[name](stage, out)
    lines = [f"# GPU check, {time.strftime('%Y-%m-%d %H:%M')} ({out})", ""]
    for stage in stages:
        lines.append(
            f"## {stage.name}: {stage.status}" + (f" ({stage.seconds:.0f} s)" if stage.seconds else "")
        )
        lines += [f"- {d}" for d in stage.details] + [""]
    summary = "\n".join(lines)
    (out / "summary.md").write_text(summary)
    print(summary, flush=True)
    if args.pack:
        from pack import pack

        print(f"[gpu-check] packed {out} into {pack(out, Path(args.pack))}", flush=True)
    ran = [s for s in stages if not s.status.startswith("skipped")]
    return 0 if all(s.status == "passed" for s in ran) else 1


if __name__ == "__main__":
    raise SystemExit(main())
