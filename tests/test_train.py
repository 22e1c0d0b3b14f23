"""Training: every task on tiny data the tests make, loss goes down, exact resume (after an
interruption and after SIGKILL), divergence stops the run, bad data files are reported."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from diagnostics.training import GradientFlowObserver
from rnnkit import datasets
from rnnkit.train import (
    Progress,
    Run,
    SineConfig,
    TrainConfig,
    TrainingDivergedError,
    fit,
    make_task,
    train_sine,
)
from rnnkit.train.run import StopRequest
from tests._data import write_idx

ROOT = Path(__file__).resolve().parents[1]


def mnist_config(folder: Path, **kw) -> TrainConfig:
    base = {"task": "mnist", "data_dir": str(folder), "download": False, "epochs": 3, "batch_size": 16,
            "hidden": 16, "layers": 1, "lr": 1e-2, "log_every": 1, "val_fraction": 0.25}  # fmt: skip
    return TrainConfig(**{**base, **kw})


def train(cfg: TrainConfig, out: Path, resume: bool = False, progress: Progress | None = None):
    task = make_task(cfg.task)
    task.prepare(cfg, print)
    run = Run(out, vars(cfg))
    on_step = GradientFlowObserver(run.log, every=cfg.diagnose) if cfg.diagnose else None
    return fit(task, cfg, run, resume=resume, progress=progress, on_step=on_step)


def step_losses(out: Path) -> list[float]:
    return [r["loss"] for r in Run(out).records("step")]


def test_mnist_loss_goes_down_and_run_dir_is_complete(tiny_mnist, tmp_path):
    result = train(mnist_config(tiny_mnist, epochs=4), tmp_path / "run")
    assert result["status"] == "finished"
    epochs = Run(tmp_path / "run").records("epoch")
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] * 0.8
    assert result["test_acc"] > 0.3, result  # 10 classes: chance is 0.1
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt"):
        assert (tmp_path / "run" / name).is_file()


@pytest.mark.parametrize("variant", [{"pixel": True}, {"permuted": True}, {"cell": "gru"}])
def test_mnist_variants_run(tiny_mnist, tmp_path, variant):
    cfg = mnist_config(tiny_mnist, epochs=1, limit=32, **variant)
    assert train(cfg, tmp_path / "run")["status"] == "finished"


def test_resume_after_epochs_reproduces_the_uninterrupted_run(tiny_mnist, tmp_path):
    train(mnist_config(tiny_mnist, epochs=3), tmp_path / "straight")
    train(mnist_config(tiny_mnist, epochs=2), tmp_path / "split")
    train(mnist_config(tiny_mnist, epochs=3), tmp_path / "split", resume=True)
    assert step_losses(tmp_path / "split") == step_losses(tmp_path / "straight")


def test_the_best_validation_epoch_is_kept_across_resume_and_tested(tiny_mnist, tmp_path, monkeypatch):
    """Model selection by validation: the weights of the epoch with the best validation score ride in
    every checkpoint, survive --resume, and are tested beside the last epoch's weights."""
    import rnnkit.train.loop as loop
    from rnnkit.train.results import summarize_run

    one = train(mnist_config(tiny_mnist, epochs=1), tmp_path / "one")  # the weights after epoch 1
    real = loop.evaluate
    scores = iter([0.9, 0.5, 0.4])  # validation accuracy of epochs 1-3 as the loop will see it

    def evaluate(task, model, split, cfg, device):
        out = real(task, model, split, cfg, device)
        return {**out, "val_acc": next(scores)} if split == "val" else out

    monkeypatch.setattr(loop, "evaluate", evaluate)
    out = tmp_path / "three"
    train(mnist_config(tiny_mnist, epochs=2), out)
    assert Run(out).load_checkpoint()["best"]["epoch"] == 1
    result = train(mnist_config(tiny_mnist, epochs=3), out, resume=True)
    chosen = result["best"]
    assert (chosen["epoch"], chosen["val_acc"], chosen["chosen_from_epoch"]) == (1, 0.9, 1)
    assert chosen["test_acc"] == one["test_acc"] and chosen["test_loss"] == one["test_loss"]
    assert result["epoch"] == 3 and result["test_loss"] != one["test_loss"], "the first row: the last weights"
    best = Run(out).load_checkpoint()["best"]["model"]
    first = Run(tmp_path / "one").load_checkpoint()["model"]
    assert all(torch.equal(best[k], first[k]) for k in first)
    assert [r["kind"] for r in Run(out).records()][-2:] == ["test", "test-best"]
    expected = f"weights of epoch 1, the best on validation: test acc {one['test_acc']:.2%}"
    assert expected in summarize_run(out)["result"]


def test_a_checkpoint_without_best_weights_chooses_among_the_epochs_after_it(tiny_mnist, tmp_path):
    from rnnkit.train.results import summarize_run

    out = tmp_path / "old"
    train(mnist_config(tiny_mnist, epochs=2), out)
    run = Run(out)
    checkpoint = run.load_checkpoint()
    del checkpoint["best"], checkpoint["best_since"]  # as written before the best weights were kept
    run.save_checkpoint(checkpoint)
    result = train(mnist_config(tiny_mnist, epochs=4), out, resume=True)
    kept = Run(out).load_checkpoint()
    assert kept["best_since"] == 3 and kept["best"]["epoch"] in (3, 4), "epochs 1-2 are not candidates"
    if "best" in result:  # epoch 3 validated better than epoch 4
        assert (result["best"]["epoch"], result["best"]["chosen_from_epoch"]) == (3, 3)
        assert "the best on validation of epochs 3-4" in summarize_run(out)["result"]


def test_ctrl_c_saves_and_resume_continues_exactly(tiny_mnist, tmp_path):
    train(mnist_config(tiny_mnist), tmp_path / "straight")

    def interrupt_at_step_7(record):  # 5 batches an epoch: step 7 is batch 1 of epoch 1
        if record["step"] == 7:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    result = train(mnist_config(tiny_mnist), tmp_path / "cut", progress=Progress(on_step=interrupt_at_step_7))
    assert result == {"status": "interrupted", "epoch": 1, "step": 7}
    assert Run(tmp_path / "cut").load_checkpoint()["batch"] == 2  # mid-epoch: batch 2 of epoch 1 is next
    train(mnist_config(tiny_mnist), tmp_path / "cut", resume=True)
    assert step_losses(tmp_path / "cut") == step_losses(tmp_path / "straight")


def test_stop_request_turns_sigint_into_a_flag():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested


def test_nan_loss_stops_with_the_step_named_and_keeps_the_checkpoint(tiny_mnist, tmp_path, monkeypatch):
    cfg = mnist_config(tiny_mnist, epochs=3)
    task = make_task("mnist")
    task.prepare(cfg, print)
    original = task.score
    calls = {"n": 0}

    def poisoned_score(output, batch):  # the 6th training batch (evaluation runs without grad)
        calls["n"] += torch.is_grad_enabled()
        loss, metric, n = original(output, batch)
        return (loss * float("nan") if calls["n"] == 6 and torch.is_grad_enabled() else loss), metric, n

    monkeypatch.setattr(task, "score", poisoned_score)
    run = Run(tmp_path / "run", vars(cfg))
    with pytest.raises(TrainingDivergedError, match=r"the loss became nan at step 6 \(epoch 2, batch 1\)"):
        fit(task, cfg, run)
    assert run.load_checkpoint()["epoch"] == 1, "the checkpoint of the last finished epoch stays"


def test_missing_and_corrupt_files_are_reported(tiny_mnist, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        datasets.DatasetError,
        match=r"mnist: train-images-idx3-ubyte.gz, .* not in .*empty .*downloading is off.*Put the four",
    ):
        datasets.load_idx_dataset("mnist", "train", empty, download_missing=False)
    path = tiny_mnist / "train-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(
        datasets.DatasetError, match=r"train-labels-idx1-ubyte.gz: cannot be read .* corrupt or truncated"
    ):
        datasets.load_idx_dataset("mnist", "train", tiny_mnist, download_missing=False)


def test_recompressed_and_unpacked_copies_are_accepted_by_content(tiny_mnist, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in datasets.MNIST_FILES:
        raw = gzip.decompress((tiny_mnist / name).read_bytes())
        if "labels" in name:
            (copy / name.removesuffix(".gz")).write_bytes(raw)  # unpacked
        else:
            (copy / name).write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))  # another gzip
    images, labels = datasets.load_idx_dataset("mnist", "train", copy, download_missing=False)
    expected_images, expected_labels = datasets.load_idx_dataset(
        "mnist", "train", tiny_mnist, download_missing=False
    )
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    (copy / "train-labels-idx1-ubyte").write_bytes(raw[:-1] + b"x")  # one byte changed
    with pytest.raises(
        datasets.DatasetError, match=r"train-labels-idx1-ubyte: MD5 .* unpacked\): the file is corrupt"
    ):
        datasets.load_idx_dataset("mnist", "train", copy, download_missing=False)


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_accepted():
    images, labels = datasets.load_idx_dataset("fashion-mnist", "test", FASHION, download_missing=False)
    assert images.shape == (10000, 28, 28) and labels.bincount().tolist() == [1000] * 10


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros((3, 2), dtype=np.uint8))
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(datasets.DatasetError, match="truncated or padded: 17 bytes, the header promises 18"):
        datasets.read_idx(tmp_path / "short")
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(datasets.DatasetError, match="not an IDX file"):
        datasets.read_idx(tmp_path / "text")


REVIEWS = {
    "pos": [
        "A wonderful, moving film.<br />Great acting!",
        "great story and great cast",
        "Loved it: wonderful.",
    ],
    "neg": ["A dull, boring mess.", "terrible acting; boring story", "Awful. Boring! Dull."],
}


def make_imdb_tree(root: Path, per_folder: int) -> Path:
    for split in ("train", "test"):
        for label, texts in REVIEWS.items():
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i in range(per_folder):
                (folder / f"{i}_{8 if label == 'pos' else 2}.txt").write_text(
                    texts[i % len(texts)] + f" number {i}"
                )
    return root


def imdb_config(folder: Path, **kw) -> TrainConfig:
    base = {"task": "imdb", "data_dir": str(folder), "download": False, "epochs": 6, "batch_size": 8,
            "hidden": 16, "layers": 1, "lr": 2e-2, "log_every": 1, "val_fraction": 0.2, "min_freq": 1,
            "embedding_dim": 8, "max_len": 12}  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_imdb_tree_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "IMDB_REVIEWS_PER_FOLDER", 12)
    folder = make_imdb_tree(tmp_path / "imdb", 12)
    result = train(imdb_config(folder), tmp_path / "run")
    epochs = Run(tmp_path / "run").records("epoch")
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert result["test_acc"] >= 0.75, result


def test_imdb_archive_is_checked_and_read(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "IMDB_REVIEWS_PER_FOLDER", 3)
    source = make_imdb_tree(tmp_path / "src", 3)
    folder = tmp_path / "imdb"
    folder.mkdir()
    archive = folder / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "aclImdb", arcname="aclImdb")
    monkeypatch.setitem(
        datasets.IMDB_ARCHIVES, "aclImdb_v1.tar.gz", hashlib.md5(archive.read_bytes()).hexdigest()
    )
    reviews = datasets.load_imdb_reviews(folder, download_missing=False)
    assert len(reviews["train"][0]) == 6 and reviews["train"][1] == [0, 0, 0, 1, 1, 1]
    archive.write_bytes(archive.read_bytes()[:-10])
    with pytest.raises(datasets.DatasetError, match=r"aclImdb_v1.tar.gz: MD5 .* corrupt or truncated"):
        datasets.load_imdb_reviews(folder, download_missing=False)


def test_imdb_incomplete_tree_and_nothing_there(tmp_path):
    make_imdb_tree(tmp_path / "imdb", 3)
    with pytest.raises(datasets.DatasetError, match=r"3 reviews, expected 12500: the tree is incomplete"):
        datasets.load_imdb_reviews(tmp_path / "imdb", download_missing=False)
    with pytest.raises(datasets.DatasetError, match=r"IMDB: no aclImdb_v1\.tar\.gz, aclImdb_v1_labelled"):
        datasets.load_imdb_reviews(tmp_path / "nothing", download_missing=False)


def test_classifier_reads_the_true_last_token():
    """Padding after a review changes nothing: the head reads h_n at each review's own length."""
    from rnnkit.models import SequenceClassifier

    model = SequenceClassifier("lstm", 8, 16, 2, vocab_size=50)
    tokens = torch.randint(2, 50, (6, 1))
    short = model(tokens, torch.tensor([6]))
    padded = model(torch.cat((tokens, torch.zeros(9, 1, dtype=torch.long))), torch.tensor([6]))
    assert torch.allclose(short, padded)


@pytest.mark.parametrize("task", ["adding", "copy"])
def test_synthetic_tasks_train(tmp_path, task):
    cfg = TrainConfig(
        task=task, epochs=2, batch_size=8, hidden=16, layers=1, seq_len=12, steps_per_epoch=4, limit=16
    )
    result = train(cfg, tmp_path / "run")
    assert result["status"] == "finished"
    metric = "test_mse" if task == "adding" else "test_acc"
    assert np.isfinite(result[metric])


def test_compiled_training_matches_eager(tmp_path):
    """--compile: the same steps through torch.compile(model) (inductor) give eager's losses."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = TrainConfig(task="copy", epochs=1, batch_size=8, hidden=16, layers=2, seq_len=6, steps_per_epoch=4,
                      limit=16, log_every=1)  # fmt: skip
    eager = train(cfg, tmp_path / "eager")
    assert not counters["stats"]["unique_graphs"]
    compiled = train(replace(cfg, compile=True), tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did capture the model
    losses, losses_compiled = step_losses(tmp_path / "eager"), step_losses(tmp_path / "compiled")
    assert len(losses) == len(losses_compiled) == 4
    np.testing.assert_allclose(losses_compiled, losses, rtol=1e-5)
    assert compiled["test_acc"] == eager["test_acc"]
    with pytest.raises(ValueError, match="diagnose: the per-step gradient record runs Python in backward"):
        replace(cfg, compile=True, diagnose=2).validate()


def test_sine_trains_plots_and_resumes(tmp_path):
    cfg = SineConfig(epochs=2, hidden=8, waves=5, length=30, future=10)
    straight = train_sine(cfg, Run(tmp_path / "straight", vars(cfg)))
    epochs = Run(tmp_path / "straight").records("epoch")
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert (tmp_path / "straight" / "predict_001.png").is_file()
    train_sine(replace(cfg, epochs=1), Run(tmp_path / "split", vars(cfg)))
    resumed = train_sine(cfg, Run(tmp_path / "split"), resume=True)
    assert resumed["test_loss"] == straight["test_loss"]


def test_sine_window_variant(tmp_path):
    cfg = SineConfig(epochs=1, hidden=8, waves=5, length=31, future=5, window=10, noise=0.1)
    assert train_sine(cfg, Run(tmp_path / "run", vars(cfg)))["status"] == "finished"


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "cli.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, **{"cwd": ROOT, **kw})


def test_cli_train_writes_the_run_directory(tmp_path):
    done = cli("train", "--task", "adding", "--seq-len", "10", "--epochs", "2", "--steps-per-epoch", "3",
               "--hidden", "8", "--limit", "16", "--out", str(tmp_path / "run"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "baseline loss: 0.1667" in done.stdout and "adding: test" in done.stdout
    for name in ("config.json", "machine.json", "metrics.jsonl", "checkpoint.pt", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    # train's process takes torch's huge pages (set before torch is imported), and says so
    machine = json.loads((tmp_path / "run" / "machine.json").read_text())
    assert machine["THP_MEM_ALLOC_ENABLE"] == "1"
    # and which library ran its CPU products (the same choice as this process's, on this CPU)
    from kernels.cpu import SETTINGS

    assert machine["products"] == ("oneDNN" if SETTINGS.onednn else "MKL")


def test_training_process_keeps_freed_memory():
    """`kernels.cpu.keep_freed_memory` (what `train` calls): glibc's malloc takes the settings
    (in a process of its own: they last for the process)."""
    code = "from kernels.cpu import keep_freed_memory; print(keep_freed_memory(), keep_freed_memory())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = "True True" if sys.platform.startswith("linux") else "False False"
    assert done.stdout.strip() == expected


def test_cli_compile_refuses_the_sine_task(tmp_path):
    done = cli("train", "--task", "sine", "--compile", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "--compile: the sine model steps its cells one at a time" in done.stderr


def test_cli_missing_data_fails_at_once(tmp_path):
    done = cli(
        "train", "--task", "mnist", "--data-dir", str(tmp_path), "--no-download", "--out", str(tmp_path / "r")
    )
    assert done.returncode == 2
    text = done.stderr
    assert "train-images-idx3-ubyte.gz" in text and "could not be fetched (downloading is off)" in text


def test_sigkill_mid_epoch_then_resume(tmp_path):
    """A run killed with SIGKILL resumes from its last checkpoint, nothing corrupted, and ends with
    the same step losses as a run that was never killed."""
    common = ["train", "--task", "copy", "--seq-len", "8", "--epochs", "3", "--steps-per-epoch", "40",
              "--hidden", "32", "--limit", "8", "--log-every", "1", "--quiet"]  # fmt: skip
    assert cli(*common, "--out", str(tmp_path / "straight")).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *common, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until epoch 0 is checkpointed and epoch 1 has begun
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] if (
            out / "metrics.jsonl").exists() else []  # fmt: skip
        if (out / "checkpoint.pt").exists() and steps and max(steps) > 45:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Run(out).load_checkpoint()["epoch"] >= 1
    done = cli("train", "--resume", str(out), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert step_losses(out) == step_losses(tmp_path / "straight")


def test_results_markdown_reads_the_runs(tiny_mnist, tmp_path):
    from rnnkit.train.results import results_markdown

    train(mnist_config(tiny_mnist, epochs=1), tmp_path / "mnist-run")
    md = results_markdown([tmp_path / "mnist-run"], {"device": "test machine", "date": "today"})
    test_acc = Run(tmp_path / "mnist-run").records("test")[0]["test_acc"]
    assert f"test acc {test_acc:.2%}" in md
    assert "| 1 |" in md, "one epoch"
    assert f"--data-dir {tiny_mnist}" not in md and f"| {tmp_path}" not in md, "no absolute path"
    assert Run(tmp_path / "mnist-run").records("epoch")[0]["threads"] == torch.get_num_threads()


def test_results_show_the_threads_of_each_stretch_of_epochs():
    """A run resumed on another thread count shows each count with its epochs; epochs recorded
    before the count was (older runs) count as the threads the run started on."""
    from rnnkit.train.results import _threads

    older = [{"kind": "epoch", "epoch": e} for e in (1, 2)]
    newer = [{"kind": "epoch", "epoch": 3, "threads": 1}, {"kind": "test"}]
    assert _threads([*older, *newer], "1") == "1"
    resumed = [{"kind": "epoch", "epoch": e, "threads": 2} for e in (4, 5)]
    assert _threads([*older, *newer, *resumed], "1") == "1 (epochs 1-3), 2 (epochs 4-5)"
    assert _threads([{"kind": "epoch", "epoch": 1, "threads": 2}, {"kind": "epoch", "epoch": 2}], "1") == (
        "2 (epoch 1), 1 (epoch 2)"
    )
    assert _threads([], "-") == "-", "no epoch yet: the machine's"


def test_results_time_leaves_out_the_pauses_of_a_resumed_run():
    from rnnkit.train.results import _wall_seconds

    records = [{"kind": "step", "time": 100.0}, {"kind": "step", "time": 160.0},
               {"kind": "interrupted", "time": 170.0},  # Ctrl-C; resumed an hour later
               {"kind": "step", "time": 3770.0}, {"kind": "epoch", "time": 3800.0},
               {"kind": "test"}]  # fmt: skip
    assert _wall_seconds(records) == 60 + 10 + 30
    killed = [{"kind": "step", "time": 100.0}, {"kind": "step", "time": 160.0},  # then SIGKILL
              {"kind": "resumed", "time": 9000.0}, {"kind": "step", "time": 9020.0}]  # fmt: skip
    assert _wall_seconds(killed) == 60 + 20, "a killed process's gap is a pause too"
    assert (
        _wall_seconds([*records[:3], {"kind": "resumed", "time": 3760.0}, *records[3:]]) == 60 + 10 + 10 + 30
    )


def test_resume_records_the_machine_and_results_name_each_machines_epochs(tiny_mnist, tmp_path):
    """Each --resume logs a "resumed" record with the machine it goes on on; RESULTS.md's row names
    the machines of a run whose epochs did not all train where it started."""
    from rnnkit.bench import machine
    from rnnkit.train.results import _machines, summarize_run

    out = tmp_path / "run"
    train(mnist_config(tiny_mnist, epochs=1), out)
    train(mnist_config(tiny_mnist, epochs=2), out, resume=True)
    resumed = Run(out).records("resumed")
    assert [r["step"] for r in resumed] == [Run(out).records("epoch")[0]["step"]]
    assert resumed[0]["machine"]["device"] == machine()["device"]
    assert "trained on" not in summarize_run(out)["result"], "one machine throughout: no note"

    def epoch(e):
        return {"kind": "epoch", "epoch": e}

    cpu, epyc = {"device": "AMD EPYC (2 cores)", "products": "oneDNN"}, "AMD EPYC (2 cores)"
    gpu = {"device": "NVIDIA H200"}
    moved = [epoch(1), epoch(2), {"kind": "resumed", "machine": gpu}, epoch(3), {"kind": "test"}]
    assert _machines(moved, cpu) == f"; trained on {epyc} (epochs 1-2), NVIDIA H200 (epoch 3)"
    back = [*moved[:4], {"kind": "resumed", "machine": {**cpu, "products": "MKL"}}, epoch(4), epoch(5)]
    assert (
        _machines(back, cpu)
        == f"; trained on {epyc} (epochs 1-2), NVIDIA H200 (epoch 3), {epyc} (epochs 4-5)"
    ), "the products' library only where every machine names one (the GPU's does not)"
    mkl = [epoch(1), {"kind": "resumed", "machine": {**cpu, "products": "MKL"}}, epoch(2)]
    assert _machines(mkl, cpu) == f"; trained on {epyc} with oneDNN (epoch 1), {epyc} with MKL (epoch 2)"
    assert _machines(mkl, {"device": epyc}) == "", "machine.json without products: the device alone"
    assert _machines([epoch(1), {"kind": "resumed", "machine": cpu}, epoch(2)], cpu) == ""
    assert (
        _machines([{"kind": "resumed", "machine": gpu}, epoch(1)], cpu)
        == "; trained on NVIDIA H200 (epoch 1)"
    )
    assert _machines([], cpu) == ""


def test_results_command_reproduces_the_run(tiny_mnist, tmp_path, monkeypatch):
    """The command RESULTS.md shows is short (only what differs from the task's defaults) and, given
    to `train`, settles the same configuration as the run's (data folder relative to the repo)."""
    import shlex
    from dataclasses import asdict

    from cli import _TRAIN_SETTINGS, build_parser
    from rnnkit.train.config import plan_training
    from rnnkit.train.results import command

    monkeypatch.chdir(tmp_path)
    cfg = mnist_config(tiny_mnist, epochs=1, clip=None, bidirectional=True, weight_drop=0.2)
    cfg = replace(cfg, backend="reference")
    argv = shlex.split(command(asdict(cfg)))
    assert argv[argv.index("--weight-drop") + 1] == "0.2"
    assert argv[argv.index("--backend") + 1] == "reference" and "--device" not in argv, "cpu: the default"
    assert "--device cuda" in command({**asdict(cfg), "device": "cuda"}), "a GPU run says so"
    assert argv[:4] == ["python", "cli.py", "train", "--task"]
    assert "--clip" in argv and argv[argv.index("--clip") + 1] == "0", "no clipping, against the default 1"
    assert not Path(argv[argv.index("--data-dir") + 1]).is_absolute()
    args = build_parser().parse_args(argv[2:])
    planned = asdict(plan_training({k: getattr(args, k) for k in _TRAIN_SETTINGS}).config)
    planned["data_dir"] = str(Path(planned["data_dir"]).resolve())
    # clip 0 and None both mean "no clipping"; download and log_every do not change what is trained
    expected = {**asdict(cfg), "data_dir": str(Path(cfg.data_dir).resolve()), "clip": 0.0, "download": True,
                "log_every": 10}  # fmt: skip
    assert planned == expected
    default = asdict(TrainConfig(**{**asdict(plan_training({"task": "imdb"}).config)}))
    assert command(default) == "python cli.py train --task imdb", "the defaults need no flag"
    older = {k: v for k, v in default.items() if k != "weight_drop"}  # saved before the setting existed
    assert command(older) == "python cli.py train --task imdb", "a setting it lacks is the dataclass default"


def test_results_keep_the_records_and_write_the_table_from_them(tmp_path):
    """`results --markdown` copies each run's records (not its checkpoints) beside the file and writes
    the table from the copies: the file's own command regenerates it, the same, without runs/."""
    import shutil

    tiny = ["--seq-len", "10", "--epochs", "1", "--steps-per-epoch", "2", "--hidden", "8", "--limit", "16"]
    trained = cli("train", "--task", "adding", *tiny, "--out", "runs/results/tiny", "--quiet", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    done = cli("results", "runs/results/tiny", "--markdown", "RESULTS.md", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    kept = tmp_path / "docs" / "results" / "results-tiny"
    records = ["config.json", "curves.png", "machine.json", "metrics.jsonl"]
    assert sorted(p.name for p in kept.iterdir()) == records, "no checkpoint"
    first = (tmp_path / "RESULTS.md").read_text()
    assert "python cli.py results docs/results/results-tiny --markdown RESULTS.md`" in first
    assert "| docs/results/results-tiny | adding |" in first
    assert "[curves](docs/results/results-tiny/curves.png)" in first
    shutil.rmtree(tmp_path / "runs")  # the machine goes; the repository's records stay
    again = cli("results", "docs/results/results-tiny", "--markdown", "RESULTS.md", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "RESULTS.md").read_text() == first
    assert sorted(p.name for p in (tmp_path / "docs" / "results").iterdir()) == ["results-tiny"]


def test_keep_records_refuses_two_runs_of_one_name_and_drops_stale_files(tmp_path):
    from rnnkit._checks import ArgumentError
    from rnnkit.train.results import keep_records

    for name in ("a/x/run", "b/x/run", "c/y/run"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "checkpoint.pt").write_text("weights")
    (tmp_path / "c/y/run/permutation.json").write_text("[]")
    into = tmp_path / "kept"
    with pytest.raises(ArgumentError, match=r"two runs would be kept as .*x-run"):
        keep_records([tmp_path / "a/x/run", tmp_path / "b/x/run"], into)
    (into / "y-run").mkdir(parents=True, exist_ok=True)
    (into / "y-run" / "curves.png").write_text("an earlier run's")
    assert keep_records([tmp_path / "c/y/run"], into) == [into / "y-run"]
    assert sorted(p.name for p in (into / "y-run").iterdir()) == ["config.json", "permutation.json"]
    with pytest.raises(ArgumentError, match="not a run folder"):
        keep_records([tmp_path / "a"], into)


def test_results_md_is_written_from_the_records_in_the_repository(tmp_path):
    """RESULTS.md, regenerated by its own command from the records the repository keeps, is the
    committed file: no number in it was typed in or comes from a folder that is gone."""
    import shlex
    import shutil

    committed = (ROOT / "RESULTS.md").read_text()
    argv = shlex.split(committed.split("Written by `", 1)[1].split("`", 1)[0])
    assert argv[:3] == ["python", "cli.py", "results"]
    for arg in argv[3:]:
        if not arg.startswith("--") and (ROOT / arg).exists():
            copy = shutil.copytree if (ROOT / arg).is_dir() else shutil.copyfile
            (tmp_path / arg).parent.mkdir(parents=True, exist_ok=True)
            copy(ROOT / arg, tmp_path / arg)
    done = cli(*argv[2:], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "RESULTS.md").read_text() == committed


def test_only_rank_zero_refuses_an_existing_run(tmp_path, monkeypatch):
    """Under torchrun the other ranks see the config.json that rank 0 has just written: only rank 0
    may call the folder taken (found as a flaky torchrun test)."""
    from rnnkit.train.config import plan_training

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    options = {"task": "adding", "out": str(out)}
    monkeypatch.setenv("RANK", "1")
    assert plan_training(options).out == out
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="holds a run already"):
        plan_training(options)


def test_torchrun_data_parallel_matches_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes half of every batch, DDP averages the
    gradients, so the weights, and the test loss rank 0 reports, match a single process."""
    common = ["--task", "adding", "--seq-len", "10", "--epochs", "1", "--steps-per-epoch", "5",
              "--hidden", "8", "--limit", "32", "--batch-size", "16", "--quiet"]  # fmt: skip
    assert cli("train", *common, "--out", str(tmp_path / "one")).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "cli.py"), "train", *common, "--out", str(tmp_path / "two")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    one, two = (Run(tmp_path / name).records("test")[0]["test_loss"] for name in ("one", "two"))
    assert two == pytest.approx(one, rel=1e-4)


def test_download_checks_the_md5_and_keeps_nothing_bad(tmp_path):
    source = tmp_path / "source.gz"
    source.write_bytes(b"the canonical bytes")
    good = hashlib.md5(source.read_bytes()).hexdigest()
    dest = datasets.download(source.as_uri(), tmp_path / "cache" / "file.gz", good)
    assert dest.read_bytes() == b"the canonical bytes"
    with pytest.raises(datasets.DatasetError, match=r"downloaded MD5 .* expected 0+; nothing was kept"):
        datasets.download(source.as_uri(), tmp_path / "cache" / "other.gz", "0" * 32)
    assert (
        not (tmp_path / "cache" / "other.gz").exists() and not (tmp_path / "cache" / "other.gz.part").exists()
    )
    with pytest.raises(datasets.DatasetError, match="cannot download"):
        datasets.download((tmp_path / "absent").as_uri(), tmp_path / "cache" / "x.gz", good)


def test_missing_files_are_downloaded_from_the_mirrors(tiny_mnist, tmp_path, monkeypatch):
    md5, _ = datasets.IDX_DATASETS["mnist"]
    monkeypatch.setitem(datasets.IDX_DATASETS, "mnist", (md5, (tiny_mnist.as_uri() + "/",)))
    paths = datasets.ensure_idx_files("mnist", tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(md5) == sorted(paths)


def test_diagnose_and_clip_are_recorded(tiny_mnist, tmp_path):
    train(mnist_config(tiny_mnist, epochs=1, diagnose=2, clip=0.5), tmp_path / "run")
    run = Run(tmp_path / "run")
    diagnostics = run.records("diagnostics")
    assert [r["step"] for r in diagnostics] == [0, 2, 4]
    lines = diagnostics[0]["lines"]
    assert [line["line"] for line in lines] == ["l0.h", "l0.c"]  # the LSTM's two paths
    assert all(len(line["norms_by_lag"]) == 28 and line["verdict"] for line in lines)
    norms = [r["grad_norm"] for r in run.records("step")]
    assert len(norms) == 5 and all(n > 0 for n in norms)
    # the global norm the diagnostics record is the one clipping saw (before it clips), at that step
    by_step = {r["step"]: r["grad_norm"] for r in run.records("step")}
    for r in diagnostics:
        assert r["global_norm"] == pytest.approx(by_step[r["step"] + 1], rel=1e-5)
        ((label, lam),) = [(x["label"], x["lambda1"]) for x in r["lyapunov"]]
        assert label == "l0" and -5 < lam < 1


def test_limit_takes_a_seeded_subset_with_every_class(tmp_path, monkeypatch, tiny_mnist):
    """--limit N: a seeded random subset that keeps each class's share (the first N of a split sorted
    by label once gave a test set of one class, and a below-chance accuracy printed as valid)."""
    monkeypatch.setattr(datasets, "IMDB_REVIEWS_PER_FOLDER", 12)
    folder = make_imdb_tree(tmp_path / "imdb", 12)  # the test reviews come sorted: 12 neg, then 12 pos
    tasks = []
    for _ in range(2):
        task = make_task("imdb")
        facts = task.prepare(imdb_config(folder, limit=6), print)
        tasks.append(task)
    assert facts["test examples"] == 6
    for split in ("train", "test"):
        labels = tasks[0].labels[tasks[0].splits[split]]
        assert len(labels) == 6 and labels.bincount().tolist() == [3, 3], (split, labels)
        assert torch.equal(tasks[0].splits[split], tasks[1].splits[split])  # seeded: the same subset
    task = make_task("mnist")
    task.prepare(mnist_config(tiny_mnist, limit=20), print)
    test = task.labels[task.splits["test"]]
    every = task.labels[len(task.labels) - 32 :]  # the 32 test digits
    assert len(test) == 20 and set(test.tolist()) == set(every.tolist())


def test_train_test_table_shows_each_rows_validation_score():
    from cli import _test_rows

    epochs = [{"kind": "epoch", "epoch": 1, "val_acc": 0.9}, {"kind": "epoch", "epoch": 2, "val_acc": 0.8}]
    best = {"kind": "test-best", "epoch": 1, "val_acc": 0.9, "test_acc": 0.88}
    rows = _test_rows({"status": "finished", "epoch": 2, "test_acc": 0.85, "best": best}, epochs, "acc")
    assert [(r["weights"], r["epoch"], r["val_acc"], r["test_acc"]) for r in rows] == [
        ("last", 2, 0.8, 0.85),
        ("best validation", 1, 0.9, 0.88),
    ]
    # no validation split (the adding task): the row has no validation score rather than a wrong one
    assert "val_mse" not in _test_rows({"epoch": 1, "test_mse": 0.1}, [{"epoch": 1}], "mse")[0]
