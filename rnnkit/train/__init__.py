"""Training runs for the sine, mnist, imdb, adding and copy tasks (`python cli.py train`)."""

from rnnkit.train.config import TASK_DEFAULTS, TrainingPlan, plan_training
from rnnkit.train.loop import Progress, TrainConfig, evaluate, fit
from rnnkit.train.run import CheckpointError, Run, RunFolderError, TrainingDivergedError
from rnnkit.train.sine import SineConfig, train_sine
from rnnkit.train.tasks import make_task

__all__ = [
    "TASK_DEFAULTS",
    "CheckpointError",
    "Progress",
    "Run",
    "RunFolderError",
    "SineConfig",
    "TrainConfig",
    "TrainingDivergedError",
    "TrainingPlan",
    "evaluate",
    "fit",
    "make_task",
    "plan_training",
    "train_sine",
]
