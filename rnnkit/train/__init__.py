"""Training runs for the sine, mnist, imdb, adding and copy tasks (`python cli.py train`)."""

from rnnkit.train.loop import Progress, TrainConfig, evaluate, fit
from rnnkit.train.run import Run, TrainingDivergedError
from rnnkit.train.sine import SineConfig, train_sine
from rnnkit.train.tasks import make_task

# per-task defaults where the command line is silent
TASK_DEFAULTS = {
    "mnist": {"hidden": 256, "layers": 2, "batch_size": 128, "lr": 1e-3, "epochs": 5},
    "imdb": {"hidden": 256, "layers": 1, "batch_size": 64, "lr": 1e-3, "epochs": 3, "val_fraction": 0.2},
    "adding": {"hidden": 128, "layers": 1, "batch_size": 64, "lr": 1e-3, "epochs": 10, "seq_len": 100},
    "copy": {"hidden": 128, "layers": 1, "batch_size": 64, "lr": 1e-3, "epochs": 10, "seq_len": 50},
    "sine": {"hidden": 51, "lr": 0.8, "epochs": 15},
}

__all__ = [
    "TASK_DEFAULTS",
    "Progress",
    "Run",
    "SineConfig",
    "TrainConfig",
    "TrainingDivergedError",
    "evaluate",
    "fit",
    "make_task",
    "train_sine",
]
