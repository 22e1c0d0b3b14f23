"""The synthetic tasks' three splits are disjoint: no validation or test batch is a training batch,
and validation is not the test set (a generator keeps only its seed's low 32 bits)."""

from __future__ import annotations

import pytest
import torch

from rnnkit.train import TrainConfig, make_task


def _task(name, **settings):
    cfg = TrainConfig(task=name, seq_len=12, steps_per_epoch=50, limit=200, **settings)
    task = make_task(name)
    task.prepare(cfg, lambda *_: None)
    return task, cfg


@pytest.mark.parametrize("name", ["adding", "copy"])
def test_the_splits_draw_from_disjoint_seeds(name):
    task, cfg = _task(name)
    low = 2**32  # what torch.Generator().manual_seed keeps of a key
    train = {key % low for seed in range(4) for epoch in range(60)
             for key, _ in task.train_keys(epoch, cfg.batch_size, seed)}  # fmt: skip
    val = {key % low for key, _ in task.eval_keys("val", 16)}
    test = {key % low for key, _ in task.eval_keys("test", 16)}
    assert len(val) == len(test) == 13  # 200 examples in batches of 16
    assert not (train & val) and not (train & test) and not (val & test)


@pytest.mark.parametrize("name", ["adding", "copy"])
def test_validation_test_and_training_batches_differ(name):
    task, cfg = _task(name)
    val, test = (task.load(split, task.eval_keys(split, 16)[0], "cpu") for split in ("val", "test"))
    train = task.load("train", task.train_keys(0, 16, cfg.seed)[0], "cpu")
    assert not torch.equal(val.inputs, test.inputs) and not torch.equal(val.inputs, train.inputs)
    assert not torch.equal(test.inputs, train.inputs)
    again = task.load("test", task.eval_keys("test", 16)[0], "cpu")
    assert torch.equal(again.inputs, test.inputs)  # and each split is the same every time it is drawn
