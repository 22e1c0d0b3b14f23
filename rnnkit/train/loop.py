"""The minibatch training loop: resumable to the step, interruptible, loud about divergence.

Determinism: epoch e visits the training batches in an order drawn from (seed, e); the global RNG
(dropout) is saved in every checkpoint. So a run resumed from a checkpoint produces the same
following losses as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from rnnkit._checks import ArgumentError, check_at_least, check_choice
from rnnkit.init import INITS
from rnnkit.models import POOLS
from rnnkit.train.run import (
    Run,
    StopRequest,
    TrainingDivergedError,
    rng_state,
    seed_everything,
)
from rnnkit.train.tasks import Batch, Task


@dataclass
class TrainConfig:
    """Every setting of a run (saved as config.json; --resume reads it back)."""

    task: str = "mnist"
    cell: str = "lstm"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    clip: float | None = None  # the gradient norm to clip to (None or 0: no clipping)
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"
    hidden: int = 256
    layers: int = 2
    data_dir: str | None = None
    download: bool = True
    val_fraction: float = 0.1
    limit: int | None = None  # at most this many examples per split (quick runs, tests)
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    log_every: int = 10
    diagnose: int = 0  # record the gradient-flow profile every N steps (0: off)
    compile: bool = False  # train through torch.compile(model)
    schedule: str = "constant"  # the learning rate by step: "constant", "cosine" from lr to 0, or
    # "late-cosine": constant for the first three quarters of the steps, then a cosine to 0
    dropout: float = 0.0  # on the inputs of every layer after the first, and before the head
    weight_drop: float = 0.0  # DropConnect on the recurrent weights (weight_hh), one mask per batch
    zoneout: float = 0.0  # LSTM: zoneout of the cell state, per unit and step (rnnkit.zoneout)
    bidirectional: bool = False
    init: str = "default"  # rnnkit.init's scheme: default, orthogonal, identity, chrono (T: the task's steps)
    pool: str = "last"  # classifiers: the head reads the final state, or the outputs' max or mean
    # mnist
    dataset: str = "mnist"
    pixel: bool = False
    permuted: bool = False
    # imdb
    max_len: int = 200
    vocab_size: int = 10_000
    min_freq: int = 10
    embedding_dim: int = 128
    # adding, copy
    seq_len: int = 100
    steps_per_epoch: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise `ArgumentError` naming the first bad setting, what was expected and what was given."""
        check_choice("task", self.task, ("mnist", "imdb", "adding", "copy"))
        check_choice("cell", self.cell, ("rnn", "rnn_relu", "lstm", "gru"))
        check_choice("optimizer", self.optimizer, ("adam", "sgd", "lbfgs"))
        check_choice("dataset", self.dataset, ("mnist", "fashion-mnist"))
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("init", self.init, INITS)
        check_choice("pool", self.pool, POOLS)
        if self.pool != "last" and self.task not in ("mnist", "imdb"):
            raise ArgumentError("pool", f"applies to the classifiers (mnist, imdb), not to {self.task}")
        if self.init == "chrono" and self.cell not in ("lstm", "gru"):
            raise ArgumentError(
                "init", f"chrono sets gate biases: it needs --cell lstm or gru, got {self.cell}"
            )
        if self.init == "identity" and self.cell not in ("rnn", "rnn_relu"):
            raise ArgumentError(
                "init", f"identity is the IRNN recipe (--cell rnn or rnn_relu), got {self.cell}"
            )
        if self.schedule != "constant" and self.optimizer == "lbfgs":
            raise ArgumentError("schedule", "LBFGS sets its own step length: use --schedule constant with it")
        for name in ("dropout", "weight_drop", "zoneout"):
            p = getattr(self, name)
            if not 0 <= p < 1:
                raise ArgumentError(name, f"expected a probability in [0, 1), got {p}")
        if self.zoneout and self.cell != "lstm":
            raise ArgumentError(
                "zoneout", f"zones out the LSTM's cell state: it needs --cell lstm, got {self.cell}"
            )
        for name in ("epochs", "batch_size", "hidden", "layers", "log_every", "steps_per_epoch", "max_len"):
            check_at_least(name, getattr(self, name), 1)
        check_at_least("limit", self.limit, 1, "at least 1 example per split (or no --limit: all)")
        check_at_least(
            "checkpoint_every", self.checkpoint_every, 0, "0 (at the end of each epoch) or more steps"
        )
        check_at_least("diagnose", self.diagnose, 0, "0 (off) or a number of steps")
        if self.task == "adding":
            check_at_least("seq_len", self.seq_len, 2, "at least 2 steps (two marked numbers)")
        check_at_least("seq_len", self.seq_len, 1)
        if not self.lr > 0:
            raise ArgumentError("lr", f"expected a positive learning rate, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise ArgumentError("val_fraction", f"expected a fraction in [0, 1), got {self.val_fraction}")
        if self.clip is not None and not self.clip >= 0:
            raise ArgumentError(
                "clip", f"expected a gradient norm to clip to (0: no clipping), got {self.clip}"
            )
        if self.compile and self.diagnose:
            raise ArgumentError(
                "diagnose",
                f"the per-step gradient record runs Python in backward, which a compiled model cannot; got "
                f"--diagnose {self.diagnose} with --compile: drop one of them",
            )


SCHEDULES = ("constant", "cosine", "late-cosine")
LATE_DECAY = 0.25  # the share of the steps over which "late-cosine" decays


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps``: a function of the
    step alone, so a resumed run continues the same curve (given more epochs, the curve stretches)."""
    if cfg.schedule == "constant" or total_steps <= 1:
        return cfg.lr
    start = (1 - LATE_DECAY) * total_steps if cfg.schedule == "late-cosine" else 0.0  # hold until start
    if step <= start:
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (min(step, total_steps) - start) / (total_steps - start)))


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)
    return torch.optim.LBFGS(params, lr=cfg.lr)


@dataclass
class Progress:
    """What the loop reports to whoever displays it (the CLI renders; tests ignore)."""

    on_epoch_start: Callable[[int, int], None] = lambda epoch, batches: None
    on_step: Callable[[dict[str, Any]], None] = lambda record: None
    on_epoch_end: Callable[[dict[str, Any]], None] = lambda record: None


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _shard(batch: Batch, rank: int, world: int) -> Batch:
    # torchrun: each process takes every world-th sequence of the batch (inputs are time-major)
    if world == 1:
        return batch
    rows = slice(rank, None, world)
    target = batch.target[rows] if batch.target.dim() == 1 else batch.target[:, rows]
    return Batch(batch.inputs[:, rows], target, None if batch.lengths is None else batch.lengths[rows])


def evaluate(
    task: Task, model: nn.Module, split: str, cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Mean loss and metric of ``split`` (eval mode, no gradients), and the number of examples."""
    model.eval()
    total_loss = total_metric = count = examples = 0.0
    with torch.no_grad():
        for key in task.eval_keys(split, task.eval_batch_size(cfg)):
            batch = task.load(split, key, device)
            loss, metric, n = task.score(model(batch.inputs, batch.lengths), batch)
            b = batch.inputs.shape[1]
            total_loss += float(loss) * b
            examples += b
            total_metric += metric
            count += n
    model.train()
    if not examples:
        return {f"{split}_loss": math.nan, f"{split}_{task.metric}": math.nan, f"{split}_examples": 0}
    return {f"{split}_loss": total_loss / examples, f"{split}_{task.metric}": total_metric / count,
            f"{split}_examples": int(examples)}  # fmt: skip


# which way a task's metric improves (the loop's choice of best weights, RESULTS.md's best epoch)
HIGHER_IS_BETTER = {"acc": True, "mse": False}


def _improves(metric: str, value: float, best: dict[str, Any] | None) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best["value"] if HIGHER_IS_BETTER[metric] else value < best["value"]


# what fit's ``on_step`` is: called with (the model being trained, the step, the step's loss_fn) before
# every optimizer step; it returns the loss after running loss_fn and its backward itself (a
# diagnostics observer: `diagnostics.training.GradientFlowObserver`), or None to let the loop do both
OnStep = Callable[[nn.Module, int, Callable[[], torch.Tensor]], "torch.Tensor | None"]


class _Training:
    """One run of the loop: the model, the optimizer, where the run stands, and its steps."""

    def __init__(
        self, task: Task, cfg: TrainConfig, run: Run, progress: Progress, on_step: OnStep | None
    ) -> None:
        self.task, self.cfg, self.run, self.progress, self.on_step = task, cfg, run, progress, on_step
        self.device = torch.device(cfg.device)
        self.rank, self.world = _distributed()
        seed_everything(cfg.seed)
        self.model = task.build_model(cfg).to(self.device)
        self.trained = self.model  # what the training steps run: DDP and torch.compile wrap it
        if self.world > 1:
            self.trained = nn.parallel.DistributedDataParallel(self.model)
        if cfg.compile:  # the training steps only: evaluation runs the model as it is
            self.trained = torch.compile(self.trained)
        self.optimizer = make_optimizer(cfg, self.model.parameters())
        self.start_epoch = self.start_batch = self.step = 0
        # the weights of the epoch with the best validation score so far: {"epoch", "metric", "value",
        # "model"}; saved in every checkpoint, so a resumed run keeps choosing among all its epochs
        # from best_since on (1, or the first epoch after resuming a checkpoint that did not keep it)
        self.best: dict[str, Any] | None = None
        self.best_since = 1
        self.total_steps = cfg.epochs * len(task.train_keys(0, cfg.batch_size, cfg.seed))

    def resume(self) -> None:
        checkpoint = self.run.resume(self.model, self.optimizer, self.device)
        if checkpoint is not None:
            self.start_epoch, self.start_batch = checkpoint["epoch"], checkpoint["batch"]
            self.step = checkpoint["step"]
            if "best" in checkpoint:
                self.best = checkpoint["best"]
                self.best_since = checkpoint["best_since"]
            else:  # written before the best weights were kept: choose among the epochs still to come
                self.best_since = self.start_epoch + 1

    def save(self, epoch: int, batch: int) -> None:
        self.run.save_checkpoint(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rng_state(),
             "epoch": epoch, "batch": batch, "step": self.step, "config": asdict(self.cfg), "best": self.best,
             "best_since": self.best_since}
        )  # fmt: skip

    def train_step(self, batch: Batch, where: tuple[int, int]) -> tuple[float, float, int, float | None]:
        """One optimizer step: (loss, summed metric, its count, the gradient norm when clipped)."""
        cfg, optimizer, stats = self.cfg, self.optimizer, {}

        def loss_fn() -> torch.Tensor:
            loss, metric, n = self.task.score(self.trained(batch.inputs, batch.lengths), batch)
            stats.update(metric=metric, count=n)
            return loss

        optimizer.zero_grad(set_to_none=True)
        if cfg.optimizer == "lbfgs":

            def closure():
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn()
                loss.backward()
                return loss

            value = optimizer.step(closure).item()
        else:
            loss = None if self.on_step is None else self.on_step(self.trained, self.step, loss_fn)
            if loss is None:
                loss = loss_fn()
                loss.backward()
            value = loss.item()
        if not math.isfinite(value):  # before a first-order step could spread it to the weights
            raise TrainingDivergedError(_diverged_message(value, *where, self.step, self.run))
        grad_norm = None
        if cfg.optimizer != "lbfgs":
            if cfg.clip:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip))
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, self.step, self.total_steps)
            optimizer.step()
        self.step += 1
        return value, stats["metric"], stats["count"], grad_norm

    def run_epoch(self, epoch: int, stop: StopRequest) -> bool:
        """Train one epoch (from where a resumed run stopped), evaluate, checkpoint; False when a
        stop was requested (the run is saved where it stopped)."""
        task, cfg = self.task, self.cfg
        keys = task.train_keys(epoch, cfg.batch_size, cfg.seed)
        first = self.start_batch if epoch == self.start_epoch else 0
        self.progress.on_epoch_start(epoch, len(keys) - first)
        started = time.perf_counter()
        total_loss = total_metric = total_count = 0.0
        for b in range(first, len(keys)):
            batch = _shard(task.load("train", keys[b], self.device), self.rank, self.world)
            value, metric, count, grad_norm = self.train_step(batch, (epoch, b))
            total_loss, total_metric, total_count = (
                total_loss + value,
                total_metric + metric,
                total_count + count,
            )
            record = {"kind": "step", "step": self.step, "epoch": epoch + 1, "loss": value,
                      task.metric: metric / max(count, 1)}  # fmt: skip
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            if self.step % cfg.log_every == 0:
                self.run.log(record)
            self.progress.on_step(record)
            if stop.requested:
                self.save(epoch, b + 1)
                self.run.log({"kind": "interrupted", "step": self.step, "epoch": epoch + 1})
                return False
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save(epoch, b + 1)
        summary = {"kind": "epoch", "step": self.step, "epoch": epoch + 1,
                   "train_loss": total_loss / max(len(keys) - first, 1),
                   f"train_{task.metric}": total_metric / max(total_count, 1),
                   "seconds": time.perf_counter() - started}  # fmt: skip
        if self.device.type == "cpu":  # what its seconds ran on (a resumed run may have more or fewer)
            summary["threads"] = torch.get_num_threads()
        if task.eval_keys("val", cfg.batch_size):
            summary.update(evaluate(task, self.model, "val", cfg, self.device))
            score = summary[f"val_{task.metric}"]
            if _improves(task.metric, score, self.best):
                state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self.best = {"epoch": epoch + 1, "metric": f"val_{task.metric}", "value": score,
                             "model": state}  # fmt: skip
        self.run.log(summary)
        self.save(epoch + 1, 0)
        self.progress.on_epoch_end(summary)
        return True


def fit(
    task: Task,
    cfg: TrainConfig,
    run: Run,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    on_step: OnStep | None = None,
) -> dict[str, Any]:
    """Train ``task`` as ``cfg`` says, writing to ``run``; ``on_step`` observes every training step
    (see `OnStep`; ``cfg.diagnose`` needs one: `diagnostics.training.GradientFlowObserver`).

    Returns:
        {"status": "finished" | "interrupted", "epoch": ..., "step": ..., and the test metrics
        when finished, of the last epoch's weights; "best": the test metrics of the weights of the
        epoch with the best validation score, where that is not the last}. Raises
        `TrainingDivergedError` on a NaN or infinite loss.
    """
    cfg.validate()
    if cfg.diagnose and on_step is None:
        raise ValueError(
            f"diagnose: {cfg.diagnose} asks for the gradient flow every {cfg.diagnose} steps, and fit "
            "was given no on_step to record it: pass "
            "on_step=diagnostics.training.GradientFlowObserver(run.log, every=cfg.diagnose)"
        )
    training = _Training(task, cfg, run, progress or Progress(), on_step)
    if resume:
        training.resume()
    with StopRequest() as stop:
        for epoch in range(training.start_epoch, cfg.epochs):
            if not training.run_epoch(epoch, stop):
                return {"status": "interrupted", "epoch": epoch, "step": training.step}
    result = {
        "kind": "test",
        "step": training.step,
        "epoch": cfg.epochs,
        **evaluate(task, training.model, "test", cfg, training.device),
    }
    run.log(result)
    finished = {"status": "finished", **result}
    best = training.best
    if best is not None and best["epoch"] != cfg.epochs:
        # model selection by validation: the test set once more, on the best epoch's weights (the
        # model is not used after this)
        training.model.load_state_dict(best["model"])
        tested = evaluate(task, training.model, "test", cfg, training.device)
        chosen = {"kind": "test-best", "step": training.step, "epoch": best["epoch"],
                  "chosen_from_epoch": training.best_since, best["metric"]: best["value"],
                  **tested}  # fmt: skip
        run.log(chosen)
        finished["best"] = chosen
    return finished


def _diverged_message(value: float, epoch: int, batch: int, step: int, run: Run) -> str:
    kept = (
        f"the last good checkpoint is {run.checkpoint_path}"
        if run.checkpoint_path.exists()
        else "no checkpoint was written yet"
    )
    return (
        f"the loss became {value} at step {step + 1} (epoch {epoch + 1}, batch {batch + 1}); training "
        f"stopped and {kept}. Try a lower --lr or --clip 1.0"
    )
