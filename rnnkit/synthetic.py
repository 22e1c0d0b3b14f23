"""Synthetic sequence tasks that need no download: random, adding and copy.

Every task draws batches time-major: ``x [T, B, I]`` and a target for the last ``target_steps``
steps. Baselines are the losses of the best answer that ignores the input.

- ``random``: x ~ N(0, 1), a N(0, 1) target at the last step (MSE). Probes gradient propagation.
- ``adding`` (Hochreiter & Schmidhuber 1997): channel 0 holds U[0, 1] values, channel 1 marks two
  of them (one in each half); the target is their sum (MSE). Always answering 1: MSE 1/6.
- ``copy`` (Arjovsky et al. 2016): 10 symbols of 8, T blanks, a delimiter, then the 10 symbols
  are to be recalled; T + 20 steps, cross-entropy over all of them. Baseline 10·ln 8 / (T + 20).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TASKS = ("random", "adding", "copy")
COPY_SYMBOLS, COPY_LENGTH = 8, 10


@dataclass(frozen=True)
class SequenceBatch:
    """x [T, B, I]; target [S, B] class indices or [S, B, O] values for the last S steps."""

    x: torch.Tensor
    target: torch.Tensor


@dataclass(frozen=True)
class SyntheticTask:
    """A synthetic task: sizes, loss kind and a sampler.

    Attributes:
        name: "random", "adding" or "copy".
        input_size, output_size: features in and out per step.
        classification: cross-entropy over output_size classes (else MSE).
    """

    name: str
    input_size: int
    output_size: int
    classification: bool

    def total_steps(self, seq_len: int) -> int:
        """The number of input steps for a task of length ``seq_len`` (copy adds 20)."""
        return seq_len + 2 * COPY_LENGTH if self.name == "copy" else seq_len

    def baseline(self, seq_len: int) -> float | None:
        """The loss of the best input-blind answer, or None where there is no standard one."""
        if self.name == "adding":
            return 1 / 6
        if self.name == "copy":
            return COPY_LENGTH * math.log(COPY_SYMBOLS) / self.total_steps(seq_len)
        return None

    def sample(self, batch: int, seq_len: int, generator: torch.Generator | None = None) -> SequenceBatch:
        """Draw a batch (on the CPU, float32).

        Example:
            >>> b = get_task("adding").sample(32, 100)
            >>> b.x.shape, b.target.shape
            (torch.Size([100, 32, 2]), torch.Size([1, 32, 1]))
        """
        if batch < 1 or seq_len < 1:
            raise ValueError(f"batch and seq_len: expected at least 1, got batch={batch}, seq_len={seq_len}")
        g = {"generator": generator}
        if self.name == "random":
            return SequenceBatch(torch.randn(seq_len, batch, 1, **g), torch.randn(1, batch, 1, **g))
        if self.name == "adding":
            if seq_len < 2:
                raise ValueError(f"seq_len: the adding task needs at least 2 steps, got {seq_len}")
            values = torch.rand(seq_len, batch, **g)
            half = seq_len // 2
            first = torch.randint(0, half, (batch,), **g)
            second = torch.randint(half, seq_len, (batch,), **g)
            marks = torch.zeros(seq_len, batch)
            cols = torch.arange(batch)
            marks[first, cols] = 1.0
            marks[second, cols] = 1.0
            target = (values * marks).sum(0).view(1, batch, 1)
            return SequenceBatch(torch.stack((values, marks), dim=-1), target)
        T = self.total_steps(seq_len)
        blank, delimiter = COPY_SYMBOLS, COPY_SYMBOLS + 1
        symbols = torch.randint(0, COPY_SYMBOLS, (COPY_LENGTH, batch), **g)
        tokens = torch.full((T, batch), blank, dtype=torch.long)
        tokens[:COPY_LENGTH] = symbols
        tokens[seq_len + COPY_LENGTH - 1] = delimiter
        target = torch.full((T, batch), blank, dtype=torch.long)
        target[-COPY_LENGTH:] = symbols
        x = torch.nn.functional.one_hot(tokens, COPY_SYMBOLS + 2).float()
        return SequenceBatch(x, target)


def get_task(name: str) -> SyntheticTask:
    """The task called ``name``: "random", "adding" or "copy"."""
    tasks = {
        "random": SyntheticTask("random", 1, 1, False),
        "adding": SyntheticTask("adding", 2, 1, False),
        "copy": SyntheticTask("copy", COPY_SYMBOLS + 2, COPY_SYMBOLS + 1, True),
    }
    if name not in tasks:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {name!r}")
    return tasks[name]
