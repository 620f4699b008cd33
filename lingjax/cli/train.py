"""Train a model; run the same command again to resume it.

    python -m lingjax.cli.train --config=tiny --workdir=runs/tiny
    python -m lingjax.cli.train --config=ling-mini-2.0 --config.model.num_layers=4 \
        --config.train.steps=40 --config.train.log_every=1 --workdir=runs/x

The workdir keeps config.json, metrics.jsonl, events.jsonl, TensorBoard files and checkpoints/.
A rerun resumes from the newest good checkpoint; changing the config there is an error unless
only resumable keys change (train.steps, logging, checkpoint cadence, ...) or
--allow_config_change is given. SIGTERM/SIGINT save a checkpoint at the next step and exit 0.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from lingjax.cli import common

common.define_config_flag("tiny")
common.define_distributed_flags()
flags.DEFINE_string("workdir", None, "Directory for config.json, metrics and checkpoints.")
flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a workdir even though the config differs from its config.json in keys that change "
    "what a step computes (model, optimizer, data). Resumable keys never need it.",
)
flags.DEFINE_bool(
    "takeover_workdir",
    False,
    "Take the workdir over from the run that holds its writer lock, although its lease has not "
    "expired: only when that run is gone for good (a lost node). A lock of a dead process on "
    "this host, or one whose heartbeat stopped, is taken over without it.",
)
flags.DEFINE_string(
    "inject_faults",
    "",
    "Testing and drills only: faults to inject, e.g. 'nan@5,spike@9x50,kill@12,killsave@10' "
    "(see lingjax/train/faults.py).",
)


def main(argv: list[str]) -> None:
    del argv
    cfg = common.resolved_config()
    FLAGS = common.FLAGS
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the output readable
        logging.set_verbosity(logging.WARNING)
    if not FLAGS.workdir:
        common.usage_error("--workdir is required (e.g. --workdir=runs/tiny)")
    from lingjax.checkpoint import CheckpointError, CheckpointSaveError
    from lingjax.checkpoint.lock import WorkdirLockedError
    from lingjax.configs import ConfigError
    from lingjax.data import CorpusError, TokenizerError
    from lingjax.posttrain import train  # every objective (C3PO's rollouts included)
    from lingjax.posttrain.rewards import RewardError
    from lingjax.train import FaultPlan, TrainingAnomalyError  # nothing heavy before

    try:
        faults = FaultPlan.parse(FLAGS.inject_faults)
    except ValueError as e:
        common.usage_error(f"--inject_faults: {e}")
    common.init_distributed()  # before anything touches the devices
    try:
        summary = train(
            cfg,
            FLAGS.workdir,
            allow_config_change=FLAGS.allow_config_change,
            faults=faults,
            takeover=FLAGS.takeover_workdir,
        )
    except (ConfigError, CorpusError, TokenizerError, RewardError, WorkdirLockedError) as e:
        # raised before anything is written (a lost lock: the run stopped at a boundary)
        common.usage_error(str(e))
    except CheckpointSaveError as e:  # a full disk, say: the run stopped, nothing is lost
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Orbax's abandoned background writes would print their tracebacks at interpreter
        # exit; the run is closed (metrics, data, checkpoints), so leave without them.
        os._exit(1)
    except (CheckpointError, TrainingAnomalyError) as e:  # the message says what to do
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if summary["preempted"]:
        print(
            f"stopped by a signal; checkpoint saved in {FLAGS.workdir}/checkpoints. Run the same "
            "command to resume."
        )
        return
    first, last = summary.get("first_loss"), summary.get("loss")
    losses = f", loss {first:.4f} (first log) -> {last:.4f}" if first and last else ""
    print(f"done: {cfg.train.steps} steps{losses}; metrics in {FLAGS.workdir}/metrics.jsonl")


if __name__ == "__main__":
    common.run(main)
