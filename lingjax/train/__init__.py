"""Training: state, the pure step, losses, optimiser and schedules, the loop, anomaly handling."""

from lingjax.train.export import is_run_dir, load_run
from lingjax.train.faults import FaultPlan
from lingjax.train.loop import TrainingAnomalyError, train
from lingjax.train.optimizer import make_optimizer
from lingjax.train.schedules import make_schedule
from lingjax.train.state import TrainState, init_state
from lingjax.train.step import controls, expert_bias_update, make_train_step

__all__ = [
    "FaultPlan",
    "TrainState",
    "TrainingAnomalyError",
    "controls",
    "expert_bias_update",
    "init_state",
    "is_run_dir",
    "load_run",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "train",
]
