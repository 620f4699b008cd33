"""Training: state, the pure step, losses, optimiser and schedules, the sharded run, the loop,
anomaly handling, resume rules and the memory planner.

    summary = lingjax.train.train(cfg, workdir="runs/x")     # the loop (resumes a workdir)
    step = make_train_step(cfg.model, cfg.train.step_config(), tx)
"""

from lingjax.train.faults import FaultPlan
from lingjax.train.loop import TrainingAnomalyError, sharded_run, train
from lingjax.train.optimizer import make_optimizer
from lingjax.train.resume import RESUMABLE_KEYS, SCHEDULE_KEYS, check_resume_config
from lingjax.train.schedules import make_schedule
from lingjax.train.sharded import ShardedTraining, shard_training, state_shardings
from lingjax.train.state import TrainState, abstract_state, init_state
from lingjax.train.step import controls, expert_bias_update, make_train_step

__all__ = [
    "RESUMABLE_KEYS",
    "SCHEDULE_KEYS",
    "FaultPlan",
    "ShardedTraining",
    "TrainState",
    "TrainingAnomalyError",
    "abstract_state",
    "check_resume_config",
    "controls",
    "expert_bias_update",
    "init_state",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "shard_training",
    "sharded_run",
    "state_shardings",
    "train",
]
