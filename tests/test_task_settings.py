"""The training settings of issue #18: the tasks' literature-level defaults (and --pixel's own),
cosine learning rate, dropout, bidirectional classifiers, pooled heads, chrono initialisation; the
sine task's training loss after its LBFGS step; epochs counted from 1 in every record and plot."""

from __future__ import annotations

import itertools
import math
import os
import signal
from dataclasses import asdict

import pytest
import torch

from rnnkit._checks import ArgumentError
from rnnkit.models import SequenceClassifier, _pool
from rnnkit.train import Progress, Run, SineConfig, TrainConfig, plan_training, train_sine
from rnnkit.train.loop import learning_rate
from tests.test_train import mnist_config, step_losses, train


def test_defaults_follow_the_task_and_its_variant():
    rows = plan_training({"task": "mnist"}).config
    assert (rows.layers, rows.schedule, rows.clip, rows.init) == (2, "cosine", 1.0, "default")
    pixel = plan_training({"task": "mnist", "pixel": True}).config
    assert (pixel.hidden, pixel.layers, pixel.init, pixel.schedule) == (128, 1, "chrono", "cosine")
    assert pixel.lr == 2e-3, "pixel: Adam 2e-3 (the A/B of issue #18)"
    assert pixel.weight_drop == 0.15, "pixel: weight drop 0.15 (issue #18: 98.11% test)"
    assert plan_training({"task": "mnist", "pixel": True, "weight_drop": 0.0}).config.weight_drop == 0.0
    assert plan_training({"task": "mnist"}).config.lr == 1e-3, "the rows keep 1e-3"
    permuted = plan_training({"task": "mnist", "permuted": True}).config
    assert (permuted.hidden, permuted.epochs, permuted.init, permuted.lr) == (128, 50, "default", 2e-3)
    assert permuted.weight_drop == 0.0, "permuted: weight drop trailed"
    assert permuted.zoneout == 0.5, "permuted: zoneout 0.5 (issue #18: 92.14% test)"
    assert plan_training({"task": "mnist", "permuted": True, "zoneout": 0.0}).config.zoneout == 0.0
    assert plan_training({"task": "mnist", "pixel": True}).config.zoneout == 0.0, "pixel: no zoneout"
    gru = plan_training({"task": "mnist", "permuted": True, "cell": "gru"}).config
    assert gru.zoneout == 0.0, "zoneout is the LSTM's: a GRU keeps the variant's other defaults without it"
    assert (gru.lr, gru.init) == (2e-3, "default")
    assert plan_training({"task": "mnist", "permuted": True, "hidden": 64}).config.hidden == 64, "given wins"
    imdb = plan_training({"task": "imdb", "cell": "gru"}).config
    assert (imdb.bidirectional, imdb.pool, imdb.dropout) == (True, "max", 0.3)
    assert plan_training({"task": "imdb", "bidirectional": False}).config.bidirectional is False
    adding = plan_training({"task": "adding"}).config
    assert (adding.init, adding.schedule, adding.epochs) == ("chrono", "late-cosine", 40)
    assert plan_training({"task": "adding", "cell": "rnn"}).config.init == "default", "chrono: gated cells"


def test_cosine_learning_rate_is_a_function_of_the_step():
    cfg = TrainConfig(lr=0.01, schedule="cosine")
    rates = [learning_rate(cfg, s, 100) for s in range(101)]
    assert rates[0] == 0.01 and rates[50] == pytest.approx(0.005) and rates[100] == pytest.approx(0)
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert learning_rate(TrainConfig(lr=0.01), 70, 100) == 0.01


def test_late_cosine_holds_then_decays_over_the_last_quarter():
    cfg = TrainConfig(lr=0.01, schedule="late-cosine")
    rates = [learning_rate(cfg, s, 200) for s in range(201)]
    assert rates[:151] == [0.01] * 151, "constant for the first three quarters"
    assert rates[175] == pytest.approx(0.005) and rates[200] == pytest.approx(0) and rates[199] > 0
    assert all(a > b for a, b in itertools.pairwise(rates[150:]))
    assert learning_rate(cfg, 250, 200) == 0, "past its last step it stays at 0"


def test_cosine_dropout_bidirectional_run_resumes_exactly(tiny_mnist, tmp_path):
    """Interrupted mid-epoch and resumed, a run with the schedule and the random masks of dropout and
    weight drop gives the losses of the uninterrupted run."""
    settings = {"schedule": "cosine", "dropout": 0.2, "weight_drop": 0.3, "bidirectional": True,
                "pool": "mean", "layers": 2}  # fmt: skip
    train(mnist_config(tiny_mnist, **settings), tmp_path / "straight")

    def interrupt_at_step_7(record):
        if record["step"] == 7:
            os.kill(os.getpid(), signal.SIGINT)

    cut = train(
        mnist_config(tiny_mnist, **settings), tmp_path / "cut", progress=Progress(on_step=interrupt_at_step_7)
    )
    assert cut["status"] == "interrupted"
    train(mnist_config(tiny_mnist, **settings), tmp_path / "cut", resume=True)
    assert step_losses(tmp_path / "cut") == step_losses(tmp_path / "straight")


def test_schedule_reaches_the_optimizer(tiny_mnist, tmp_path, monkeypatch):
    seen = []
    original = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    train(mnist_config(tiny_mnist, epochs=2, schedule="cosine", lr=0.02), tmp_path / "run")
    total = len(seen)
    assert seen == pytest.approx([0.02 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total)])


@pytest.mark.parametrize("how", ["max", "mean"])
def test_pooling_ignores_padding(how):
    torch.manual_seed(0)
    output = torch.randn(7, 3, 4)
    lengths = torch.tensor([7, 2, 5])
    pooled = _pool(output, lengths, how)
    for b, n in enumerate(lengths.tolist()):
        steps = output[:n, b]
        expected = steps.amax(0) if how == "max" else steps.mean(0)
        torch.testing.assert_close(pooled[b], expected)
    padded = torch.cat((output, torch.full((3, 3, 4), 1e6)))  # padding steps never count
    torch.testing.assert_close(_pool(padded, lengths, how), pooled)


def test_pooled_bidirectional_classifier_reads_no_padding():
    model = SequenceClassifier("gru", 8, 16, 2, vocab_size=50, bidirectional=True, pool="max", dropout=0.5)
    model.eval()
    tokens = torch.randint(2, 50, (6, 1))
    short = model(tokens, torch.tensor([6]))
    padded = model(torch.cat((tokens, torch.zeros(9, 1, dtype=torch.long))), torch.tensor([6]))
    torch.testing.assert_close(short, padded)
    with pytest.raises(ValueError, match="pool: expected one of last, max, mean, got 'sum'"):
        SequenceClassifier("gru", 8, 16, 2, pool="sum")


def test_chrono_initialisation_reaches_the_model(tiny_mnist):
    """--init chrono sets the forget-gate biases from the task's sequence length (784 with --pixel)."""
    from rnnkit.train import make_task

    cfg = mnist_config(tiny_mnist, pixel=True, init="chrono", hidden=32)
    task = make_task("mnist")
    task.prepare(cfg, print)
    layer = task.build_model(cfg).recurrent
    forget = layer.bias_ih_l0[32:64]
    assert forget.min() >= 0 and forget.max() <= math.log(783) and forget.max() > math.log(50)
    torch.testing.assert_close(layer.bias_ih_l0[:32], -forget)


@pytest.mark.parametrize("option, attribute", [("weight_drop", "weight_drop"), ("zoneout", "cell_zoneout")])
def test_regularisers_reach_the_model(tiny_mnist, option, attribute):
    """--weight-drop is the recurrent layer's DropConnect probability, --zoneout the LSTM's
    cell_zoneout; both off unless given or a variant's default (the rows' defaults)."""
    from rnnkit.train import make_task

    task = make_task("mnist")
    cfg = mnist_config(tiny_mnist, **{option: 0.25}, hidden=16)
    task.prepare(cfg, print)
    assert getattr(task.build_model(cfg).recurrent, attribute) == 0.25
    assert getattr(plan_training({"task": "mnist"}).config, option) == 0.0


def test_zoneout_needs_the_lstm():
    with pytest.raises(ArgumentError, match="zones out the LSTM's cell state: it needs --cell lstm, got gru"):
        plan_training({"task": "mnist", "cell": "gru", "zoneout": 0.1})
    with pytest.raises(ArgumentError, match=r"expected a probability in \[0, 1\), got 1.0"):
        plan_training({"task": "mnist", "zoneout": 1.0})


def test_datasets_evaluate_in_batches_of_at_least_512(tiny_mnist):
    """A dataset's splits are the same examples however they are batched, so evaluation takes at least
    512 at a time (fewer launches on a GPU); a synthetic task's eval set is drawn per batch, and keeps
    the training's batch size (its examples would change)."""
    from rnnkit.train import make_task

    cfg = mnist_config(tiny_mnist, hidden=16)
    assert make_task("mnist").eval_batch_size(cfg) == 512
    assert make_task("mnist").eval_batch_size(mnist_config(tiny_mnist, batch_size=1000)) == 1000
    adding = plan_training({"task": "adding", "batch_size": 50}).config
    assert make_task("adding").eval_batch_size(adding) == 50


def test_a_run_saved_before_weight_drop_resumes_without_it(tmp_path):
    plan = plan_training({"task": "adding", "out": str(tmp_path / "r")})
    saved = {k: v for k, v in asdict(plan.config).items() if k != "weight_drop"}
    Run(plan.out, saved)
    assert plan_training({"resume": str(plan.out)}).config.weight_drop == 0.0


def test_sine_reports_the_loss_after_its_step(tmp_path):
    """LBFGS's return value is the loss before the step: the record holds the loss after it."""
    from rnnkit.train.sine import SineModel, make_waves, training_pairs

    cfg = SineConfig(epochs=1, hidden=8, waves=5, length=30, future=10)
    run = Run(tmp_path / "run", vars(cfg))
    train_sine(cfg, run)
    model = SineModel(cfg.cell, cfg.hidden, cfg.backend)
    model.load_state_dict(run.load_checkpoint()["model"])
    x, y = training_pairs(make_waves(cfg)[3:], cfg.window)
    with torch.no_grad():
        after = float(torch.nn.functional.mse_loss(model(x), y))
    record = run.records("epoch")[0]
    assert record["epoch"] == 1 and record["train_loss"] == pytest.approx(after, rel=1e-6)


def test_epochs_count_from_one_and_the_plot_has_whole_epochs(tiny_mnist, tmp_path, monkeypatch):
    from rnnkit.plotting import pyplot
    from rnnkit.train.run import plot_curves

    train(mnist_config(tiny_mnist, epochs=1), tmp_path / "run")
    run = Run(tmp_path / "run")
    assert [r["epoch"] for r in run.records("epoch")] == [1]
    assert {r["epoch"] for r in run.records("step")} == {1}
    plt = pyplot()
    figures = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    plot_curves(run, "acc")
    loss_ax, metric_ax = figures[0].axes
    assert metric_ax.get_xlim() == (0.5, 1.5)
    assert [t for t in metric_ax.get_xticks() if 0.5 <= t <= 1.5] == [1.0], "whole epochs only"
    colours = {
        ax: {line.get_label(): line.get_color() for line in ax.get_lines()} for ax in (loss_ax, metric_ax)
    }
    assert colours[loss_ax]["validation"] == colours[metric_ax]["validation"]
    assert colours[metric_ax]["train"] == colours[loss_ax]["train (step)"]


def test_config_round_trips_through_resume(tmp_path):
    """A new run's config.json keeps the task defaults it was given, so --resume trains the same."""
    plan = plan_training({"task": "imdb", "out": str(tmp_path / "r")})
    Run(plan.out, asdict(plan.config))
    resumed = plan_training({"resume": str(plan.out)})
    assert asdict(resumed.config) == asdict(plan.config)


def test_the_plot_of_a_run_inside_its_first_epoch_says_so_without_a_warning(tmp_path, monkeypatch):
    # a run interrupted before its first epoch ended has step records only: the epoch panel has
    # nothing to draw, and matplotlib warned of a legend without entries
    import warnings

    from rnnkit.plotting import pyplot
    from rnnkit.train.run import plot_curves

    run = Run(tmp_path / "run", {"task": "mnist"})
    for step in (10, 20):
        run.log({"kind": "step", "step": step, "epoch": 1, "loss": 2.0, "acc": 0.2})
    plt = pyplot()
    figures = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_curves(run, "acc")
    loss_ax, metric_ax = figures[0].axes
    assert [t.get_text() for t in metric_ax.texts] == ["no epoch finished yet"]
    assert loss_ax.get_legend() is not None and metric_ax.get_legend() is None
