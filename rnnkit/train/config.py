"""What a training command will do, decided before anything runs or is written.

`plan_training` turns the options of ``python cli.py train`` (None where not given) into a
`TrainingPlan`: the task, its settings (task defaults, then what was given), the run folder, and
whether it resumes. Every setting is checked there: a bad one raises `ArgumentError` naming it,
before any data is loaded or any file written. With ``--resume`` the run keeps the settings in its
config.json; only the options in `RESUME_APPLIES` may change, others that differ are refused.

Example:
    >>> plan = plan_training({"task": "adding", "epochs": 2, "seq_len": 20})
    >>> plan.config.epochs, plan.config.hidden      # given, and the task's default
    (2, 128)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rnnkit._checks import ArgumentError, check_choice, check_output_path, check_where
from rnnkit.train.loop import TrainConfig
from rnnkit.train.run import CheckpointError, Run, RunFolderError
from rnnkit.train.sine import SineConfig

TASKS = ("sine", "mnist", "imdb", "adding", "copy")
# per-task defaults where the command line is silent: the settings that reach the accuracy in
# RESULTS.md (what each one changed is written there next to the result)
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"hidden": 256, "layers": 2, "batch_size": 128, "lr": 1e-3, "epochs": 12, "schedule": "cosine",
              "clip": 1.0, "dropout": 0.1},
    "imdb": {"hidden": 128, "layers": 1, "batch_size": 64, "lr": 2e-3, "epochs": 5, "val_fraction": 0.2,
             "schedule": "cosine", "clip": 1.0, "dropout": 0.3, "bidirectional": True, "pool": "max"},
    "adding": {"hidden": 128, "layers": 1, "batch_size": 64, "lr": 1e-3, "epochs": 40, "seq_len": 100,
               "schedule": "late-cosine", "clip": 1.0, "init": "chrono"},
    "copy": {"hidden": 128, "layers": 1, "batch_size": 64, "lr": 1e-3, "epochs": 10, "seq_len": 50},
    "sine": {"hidden": 51, "lr": 0.8, "epochs": 15},
}  # fmt: skip
# defaults that replace the task's when an option is given: pixel-by-pixel MNIST is a 784-step
# memory task (one layer, more epochs; chrono gates that keep state for hundreds of steps). Permuted,
# its information spread over every step, learnt far slower with chrono gates than with torch's
# initialisation (validation 22, 25, 30% after epochs 1-3 against 43, 53%: RESULTS.md). Adam 2e-3
# against 1e-3 (RESULTS.md): pixel 97.71% test against 97.41%, permuted ahead from epoch 2 on. Pixel
# overfitted (validation loss up from epoch 20, training accuracy 99.5%): weight drop 0.15 on the
# recurrent weights kept its validation loss falling and reached 98.11% test (H200); on permuted,
# 0.1 and 0.25 trailed (RESULTS.md). Permuted overfitted too (training 98.6%, 90.12% test): zoneout
# of the cell state, 0.5 against 0.15 over all 50 epochs, led at every epoch from 19 on and reached
# 92.14% test against 91.40%: both fit 94% of the training set, 0.5 with the smaller gap (RESULTS.md)
_PIXEL = {"hidden": 128, "layers": 1, "epochs": 50, "dropout": 0.0, "lr": 2e-3}
VARIANT_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("mnist", "pixel"): {**_PIXEL, "init": "chrono", "weight_drop": 0.15},
    ("mnist", "permuted"): {**_PIXEL, "init": "default", "zoneout": 0.5},
}
# the options each task uses; any other given is refused (silently ignoring it would mislead)
_MINIBATCH = ("cell", "epochs", "batch_size", "lr", "optimizer", "clip", "hidden", "layers", "seed",
              "device", "backend", "checkpoint_every", "log_every", "diagnose", "compile", "val_fraction",
              "limit", "schedule", "dropout", "weight_drop", "zoneout", "bidirectional", "init")  # fmt: skip
TASK_OPTIONS: dict[str, tuple[str, ...]] = {
    "mnist": (*_MINIBATCH, "data_dir", "download", "dataset", "pixel", "permuted", "pool"),
    "imdb": (*_MINIBATCH, "data_dir", "download", "max_len", "pool"),
    "adding": (*_MINIBATCH, "seq_len", "steps_per_epoch"),
    "copy": (*_MINIBATCH, "seq_len", "steps_per_epoch"),
    "sine": ("cell", "epochs", "lr", "hidden", "seed", "device", "backend", "window", "noise", "compare"),
}
# what a resumed run may change: more epochs, and where and with which backend it computes
RESUME_APPLIES = ("epochs", "device", "backend")
# options that are not settings of the run
_NOT_SETTINGS = ("task", "resume", "out", "quiet")


@dataclass
class TrainingPlan:
    """A checked training command.

    Attributes:
        task: "sine", "mnist", "imdb", "adding" or "copy".
        out: the run folder (not created yet for a new run).
        resume: continue the run in ``out`` from its checkpoint.
        config: the settings of a minibatch task (None for sine).
        sine: one config per cell for the sine task (several with ``compare``).
        epochs_done: epochs the resumed run had finished.
    """

    task: str
    out: Path
    resume: bool
    config: TrainConfig | None = None
    sine: tuple[SineConfig, ...] = ()
    epochs_done: int = 0


def plan_training(options: dict[str, Any], *, stamp: str | None = None) -> TrainingPlan:
    """Check a training command and settle its settings; creates and loads nothing.

    Args:
        options: the command line's options by setting name (``batch_size``, not ``--batch-size``),
            None where not given; ``resume`` (a run folder), ``out`` and ``quiet`` among them.
        stamp: the time in a new run's default folder name (default: now).

    Raises:
        ArgumentError: naming the first bad setting, what was expected and what was given.
    """
    given = {k: v for k, v in options.items() if v is not None}
    if options.get("resume") is not None:
        return _plan_resume(Path(options["resume"]), given)
    task = check_choice("task", options.get("task") or "sine", TASKS)
    _refuse_unused(task, given)
    settings = {k: v for k, v in given.items() if k not in _NOT_SETTINGS}
    settings = {**defaults(task, settings), **settings}
    out = Path(options.get("out") or f"runs/{task}-{stamp or time.strftime('%Y%m%d-%H%M%S')}")
    check_output_path(out, "out", folder=True)
    # under torchrun only rank 0 checks: the others may already see the config.json it just wrote
    if int(os.environ.get("RANK", "0")) == 0 and (out / "config.json").exists():
        raise ArgumentError(
            "out", f"{out} holds a run already: continue it with --resume {out}, or choose another folder"
        )
    return _planned(task, out, settings, resume=False)


def defaults(task: str, given: dict[str, Any]) -> dict[str, Any]:
    """The task's settings where the command line is silent, given what it says (``--pixel`` brings
    its own; chrono initialisation only for the gated cells, zoneout only for the LSTM)."""
    settings = dict(TASK_DEFAULTS[task])
    for (of, option), extra in VARIANT_DEFAULTS.items():
        if of == task and given.get(option):
            settings.update(extra)
    cell = given.get("cell") or "lstm"
    if settings.get("init") == "chrono" and cell not in ("lstm", "gru"):
        del settings["init"]
    if settings.get("zoneout") and cell != "lstm":
        del settings["zoneout"]
    return settings


# why an option does not apply, where "the task does not use it" is not the whole story
_WHY_NOT = {
    ("sine", "compile"): "the sine model steps its cells one at a time (its future is fed back), which "
    "torch.compile would unroll for every step; use --compile with mnist, imdb, adding or copy",
}


def _refuse_unused(task: str, given: dict[str, Any]) -> None:
    unused = [k for k in given if k not in _NOT_SETTINGS and k not in TASK_OPTIONS[task]]
    if unused and (task, unused[0]) in _WHY_NOT:
        raise ArgumentError(unused[0], _WHY_NOT[task, unused[0]])
    if unused:
        raise ArgumentError(
            unused[0], f"does not apply to the {task} task (it uses: {', '.join(TASK_OPTIONS[task])})"
        )


def _plan_resume(out: Path, given: dict[str, Any]) -> TrainingPlan:
    run = Run(out, create=False)
    try:
        saved = run.config()
    except RunFolderError as err:
        raise ArgumentError("resume", str(err)) from None
    task = saved.get("task")
    if task not in TASKS:
        raise ArgumentError("resume", f"{out}/config.json names no known task (task: {task!r})")
    changed = [k for k, v in given.items() if k not in ("resume", "quiet") and k not in RESUME_APPLIES
               and saved.get(k, v) != v]  # fmt: skip
    if changed:
        key = changed[0]
        kept = f"{out}/config.json has {key}: {saved.get(key)!r}, given {given[key]!r}"
        applies = ", ".join(f"--{k}" for k in RESUME_APPLIES)
        detail = f"a resumed run keeps its settings ({kept}); with --resume only {applies} apply"
        raise ArgumentError(key, detail)
    try:
        checkpoint = run.load_checkpoint()
    except CheckpointError as err:
        raise ArgumentError("resume", str(err)) from None
    done = 0 if checkpoint is None else int(checkpoint.get("epoch", 0))
    settings = {k: v for k, v in saved.items() if k != "task"}
    settings.update({k: given[k] for k in RESUME_APPLIES if k in given})
    if "epochs" in given and given["epochs"] < done:
        raise ArgumentError(
            "epochs",
            f"the run has finished {done} epochs; to extend it give at least {done}, got {given['epochs']}",
        )
    return _planned(task, out, settings, resume=True, epochs_done=done)


def _planned(
    task: str, out: Path, settings: dict[str, Any], *, resume: bool, epochs_done: int = 0
) -> TrainingPlan:
    if task == "sine":
        cells = (settings.pop("compare", None) or settings.get("cell", "lstm")).split(",")
        names = {f.name for f in fields(SineConfig)}
        configs = []
        for cell in cells:  # the whole list is checked before any cell trains
            cfg = SineConfig(**{**{k: v for k, v in settings.items() if k in names}, "cell": cell})
            cfg.validate(argument="compare" if len(cells) > 1 else "cell")
            configs.append(cfg)
        check_where(configs[0].device, configs[0].backend)
        return TrainingPlan(task, out, resume, sine=tuple(configs), epochs_done=epochs_done)
    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in settings.items() if k in names}, task=task)
    cfg.validate()
    check_where(cfg.device, cfg.backend)
    return TrainingPlan(task, out, resume, config=cfg, epochs_done=epochs_done)
