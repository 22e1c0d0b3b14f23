"""The minibatch training tasks: mnist (rows, pixels, permuted pixels; Fashion-MNIST too), imdb,
adding and copy. Each says how to load its data, cut it into batches, build its model and score it.

Batches are time-major: inputs [T, B, ...], as rnnkit's layers take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.datasets import load_idx_dataset, load_imdb_reviews
from rnnkit.init import initialize
from rnnkit.models import SequenceClassifier, SequenceModel
from rnnkit.synthetic import get_task
from rnnkit.text import build_vocab, encode, tokenize

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SPLIT_SEED = 0  # the fixed seed of every train/validation split


@dataclass
class Batch:
    inputs: torch.Tensor  # [T, B, ...]
    target: torch.Tensor
    lengths: torch.Tensor | None = None


def _split(n: int, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = round(n * val_fraction)
    return order[n_val:], order[:n_val]


def _limit(indices: torch.Tensor, labels: torch.Tensor, limit: int | None) -> torch.Tensor:
    """At most ``limit`` of ``indices``: a seeded random subset with each class in its share of the
    split (largest remainders fill what rounding leaves), so that a limited split is never one class."""
    if limit is None or limit >= len(indices):
        return indices
    g = torch.Generator().manual_seed(SPLIT_SEED)
    shuffled = indices[torch.randperm(len(indices), generator=g)]
    classes, counts = torch.unique(labels[shuffled], return_counts=True)
    share = counts.double() * limit / len(indices)
    take = share.floor().long()
    for c in torch.argsort(share - take, descending=True)[: limit - int(take.sum())]:
        take[c] += 1
    of = labels[shuffled]
    chosen = torch.cat([shuffled[of == c][:n] for c, n in zip(classes.tolist(), take.tolist(), strict=True)])
    return chosen[torch.randperm(len(chosen), generator=g)]


class Task:
    """The interface the training loop uses."""

    name: str
    metric: str  # what `score` reports besides the loss ("acc", "mse")
    higher_is_better: bool = True

    def prepare(self, cfg, log) -> dict[str, Any]:  # -> facts to print and keep in the run
        raise NotImplementedError

    def train_keys(self, epoch: int, batch_size: int, seed: int) -> list[Any]:
        raise NotImplementedError

    def eval_keys(self, split: str, batch_size: int) -> list[Any]:
        raise NotImplementedError

    def eval_batch_size(self, cfg) -> int:
        """The batch size of evaluation (`loop.evaluate`): the training's, unless a task says more."""
        return cfg.batch_size

    def load(self, split: str, key: Any, device: torch.device) -> Batch:
        raise NotImplementedError

    def build_model(self, cfg) -> nn.Module:
        raise NotImplementedError

    def score(self, output: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, float, int]:
        """(mean loss, summed metric, count) of one batch."""
        raise NotImplementedError


# the smallest evaluation batch of a dataset's splits (pixel MNIST at 512: 0.8 GB of gate
# pre-activations in float32 on the CPU)
EVAL_BATCH = 512


class _IndexedTask(Task):
    # a dataset in memory: "train", "val", "test" index sets; batches are index tensors
    splits: dict[str, torch.Tensor]

    def train_keys(self, epoch, batch_size, seed):
        train = self.splits["train"]
        order = train[
            torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        ]
        return list(order.split(batch_size))

    def eval_keys(self, split, batch_size):
        return list(self.splits[split].split(batch_size))

    def eval_batch_size(self, cfg):
        # at least EVAL_BATCH: a split's examples do not depend on its batching, and evaluation keeps
        # nothing for a backward; fewer, larger batches make fewer launches on a GPU (an LSTM with
        # cell zoneout evaluates in torch ops, ~15 a step: 784 steps x 47 batches of 128 were ~4 s)
        return max(cfg.batch_size, EVAL_BATCH)

    def score(self, output, batch):
        loss = F.cross_entropy(output, batch.target)
        return loss, float((output.argmax(-1) == batch.target).sum()), len(batch.target)


class MNISTTask(_IndexedTask):
    """MNIST as sequences: rows (28 steps of 28), pixels (784 of 1), or a fixed permutation of pixels."""

    name, metric = "mnist", "acc"

    def prepare(self, cfg, log):
        train_images, train_labels = load_idx_dataset(
            cfg.dataset, "train", cfg.data_dir, download_missing=cfg.download
        )
        test_images, test_labels = load_idx_dataset(
            cfg.dataset, "test", cfg.data_dir, download_missing=cfg.download
        )
        images = torch.cat((train_images, test_images)).float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD)
        self.labels = torch.cat((train_labels, test_labels))
        n_train = len(train_images)
        train, val = _split(n_train, cfg.val_fraction)
        self.splits = {
            "train": _limit(train, self.labels, cfg.limit),
            "val": _limit(val, self.labels, cfg.limit),
            "test": _limit(torch.arange(n_train, len(images)), self.labels, cfg.limit),
        }
        pixels = images.flatten(1)  # [N, 784]
        self.permutation = None
        if cfg.permuted:
            self.permutation = torch.randperm(784, generator=torch.Generator().manual_seed(cfg.seed))
            pixels = pixels[:, self.permutation]
        self.inputs = pixels.view(-1, 784, 1) if cfg.pixel or cfg.permuted else images  # [N, T, I]
        T, I = self.inputs.shape[1:]
        return {
            "dataset": cfg.dataset, "steps": T, "features": I,
            **{f"{k} examples": len(v) for k, v in self.splits.items()},
        }  # fmt: skip

    def load(self, split, key, device):
        return Batch(self.inputs[key].transpose(0, 1).to(device), self.labels[key].to(device))

    def build_model(self, cfg):
        T, I = self.inputs.shape[1:]
        return _initialized(SequenceClassifier(cfg.cell, I, cfg.hidden, 10, **_model_options(cfg)), cfg, T)


class IMDBTask(_IndexedTask):
    """IMDB reviews: 10,000-word vocabulary of the training split, reviews cut/padded to max_len."""

    name, metric = "imdb", "acc"

    def prepare(self, cfg, log):
        reviews = load_imdb_reviews(cfg.data_dir, download_missing=cfg.download)
        texts = reviews["train"][0] + reviews["test"][0]
        self.labels = torch.tensor(reviews["train"][1] + reviews["test"][1])
        tokens = [tokenize(t) for t in texts]
        n_train = len(reviews["train"][0])
        train, val = _split(n_train, cfg.val_fraction)
        self.vocab = build_vocab(
            (tokens[i] for i in train.tolist()), max_size=cfg.vocab_size, min_freq=cfg.min_freq
        )
        self.ids, self.lengths = encode(tokens, self.vocab, cfg.max_len)  # [N, max_len], [N]
        self.splits = {
            "train": _limit(train, self.labels, cfg.limit),
            "val": _limit(val, self.labels, cfg.limit),
            "test": _limit(torch.arange(n_train, len(texts)), self.labels, cfg.limit),
        }
        cut = float((torch.tensor([len(t) for t in tokens]) > cfg.max_len).float().mean())
        return {
            "vocabulary": len(self.vocab), "max_len": cfg.max_len, "reviews cut": f"{cut:.1%}",
            **{f"{k} examples": len(v) for k, v in self.splits.items()},
        }  # fmt: skip

    def load(self, split, key, device):
        lengths = self.lengths[key]
        T = int(lengths.max())  # no step past the longest review of the batch
        return Batch(self.ids[key, :T].T.to(device), self.labels[key].to(device), lengths)

    def build_model(self, cfg):
        model = SequenceClassifier(
            cfg.cell, cfg.embedding_dim, cfg.hidden, 2, vocab_size=len(self.vocab) + 2, **_model_options(cfg)
        )
        return _initialized(model, cfg, cfg.max_len)


class SyntheticTask(Task):
    """adding and copy: fresh batches drawn from a seeded generator; a fixed test set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.spec = get_task(name)
        self.metric = "acc" if self.spec.classification else "mse"
        self.higher_is_better = self.spec.classification

    def prepare(self, cfg, log):
        self.seq_len, self.steps_per_epoch = cfg.seq_len, cfg.steps_per_epoch
        self.eval_size = cfg.limit or 1000
        baseline = self.spec.baseline(cfg.seq_len)
        return {"steps": self.spec.total_steps(cfg.seq_len), "baseline loss": f"{baseline:.4g}"}

    # A batch is drawn from torch.Generator().manual_seed(key), which keeps only the key's low 32
    # bits: the three splits take disjoint ranges of them, training [0, 2^31), validation
    # [2^31, 2^31 + 2^30), test [2^31 + 2^30, 2^32). (Offsets of 2^40 and 2^41 once made all three
    # the same batches.)
    TRAIN_SEEDS = 2**31
    EVAL_OFFSET: ClassVar[dict[str, int]] = {"val": 2**31, "test": 2**31 + 2**30}
    EVAL_SEEDS = 2**30

    def train_keys(self, epoch, batch_size, seed):
        base = (seed * 100_003 + epoch) * 1_000_003
        return [((base + i) % self.TRAIN_SEEDS, batch_size) for i in range(self.steps_per_epoch)]

    def eval_keys(self, split, batch_size):
        sizes = [min(batch_size, self.eval_size - s) for s in range(0, self.eval_size, batch_size)]
        if len(sizes) > self.EVAL_SEEDS:
            raise ValueError(f"limit: at most {self.EVAL_SEEDS} batches per split, got {len(sizes)}")
        return [(self.EVAL_OFFSET[split] + i, n) for i, n in enumerate(sizes)]

    def load(self, split, key, device):
        seed, size = key
        batch = self.spec.sample(size, self.seq_len, torch.Generator().manual_seed(seed))
        return Batch(batch.x.to(device), batch.target.to(device))

    def build_model(self, cfg):
        spec = self.spec
        model = SequenceModel(
            cfg.cell, spec.input_size, cfg.hidden, spec.output_size, num_layers=cfg.layers,
            bidirectional=cfg.bidirectional, backend=cfg.backend, dropout=cfg.dropout,
            weight_drop=cfg.weight_drop, cell_zoneout=cfg.zoneout,
        )  # fmt: skip
        return _initialized(model, cfg, spec.total_steps(cfg.seq_len))

    def score(self, output, batch):
        if not self.spec.classification:  # adding: the answer at the last step
            pred = output[-1:]
            loss = F.mse_loss(pred, batch.target)
            return loss, (pred.detach() - batch.target).square().sum().item(), batch.target.numel()
        loss = F.cross_entropy(output.flatten(0, 1), batch.target.flatten())  # copy: every step
        recall = output[-10:].argmax(-1) == batch.target[-10:]
        return loss, float(recall.sum()), recall.numel()


def _model_options(cfg) -> dict[str, Any]:
    return {"num_layers": cfg.layers, "bidirectional": cfg.bidirectional, "backend": cfg.backend,
            "dropout": cfg.dropout, "weight_drop": cfg.weight_drop, "cell_zoneout": cfg.zoneout,
            "pool": cfg.pool}  # fmt: skip


def _initialized(model: nn.Module, cfg, steps: int) -> nn.Module:
    # cfg.init on the recurrent layers; chrono's longest dependency is the task's sequence length
    if cfg.init != "default":
        initialize(model.recurrent, cfg.init, seq_len=steps)
    return model


def make_task(name: str) -> Task:
    if name == "mnist":
        return MNISTTask()
    if name == "imdb":
        return IMDBTask()
    if name in ("adding", "copy"):
        return SyntheticTask(name)
    raise ValueError(f"task: expected one of sine, mnist, imdb, adding, copy, got {name!r}")
