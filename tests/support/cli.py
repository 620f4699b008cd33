"""Running the CLIs as a user does: a subprocess with one CPU device, and a small training
run with checkpoints to read (the shared host-logic config of tests/train/test_resume.py, so
its compiled step comes from the run's JAX cache)."""

import os
import socket
import subprocess
import sys

RUN_FLAGS = {
    "model.num_layers": 1,
    "train.steps": 12,
    "train.log_every": 2,
    "train.batch_size": 2,
    "train.seq_len": 32,
    "checkpoint.every_steps": 6,
    "checkpoint.params_every_steps": 2,
    "mesh.data": 1,
    "train.schedule_steps": 1000,
    "data.eval_fraction": 0.05,
    "eval.every": 2,
    "eval.batches": 1,
}


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the coordinator of local multi-process tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str) -> subprocess.CompletedProcess:
    """`python -m <args>` on one CPU device (LLVM optimisation off, as in tests/conftest.py)."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0",
    }
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=600
    )


def train_run(workdir, corpus_dir: str, **overrides) -> None:
    """Trains `tiny` with RUN_FLAGS (and overrides) into workdir through the CLI."""
    flags = [f"--config.{k}={v}" for k, v in {**RUN_FLAGS, **overrides}.items()]
    r = run(
        "lingjax.cli.train",
        "--config=tiny",
        *flags,
        f"--config.data.corpus={corpus_dir}",
        f"--workdir={workdir}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
