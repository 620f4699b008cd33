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


def cpu_env(devices: int = 1) -> dict[str, str]:
    """The environment of a CLI subprocess: `devices` CPU devices, LLVM optimisation off (as in
    tests/conftest.py: the HLO is the same, compiles are faster)."""
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0",
    }


def train_cmd(workdir, corpus_dir, overrides: dict, *extra: str, config: str = "tiny") -> list:
    """The argv of `python -m lingjax.cli.train` on `config` with `--config.KEY=VALUE` for each
    override, the corpus and the workdir, then `extra` flags."""
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    corpus = [f"--config.data.corpus={corpus_dir}"] if corpus_dir else []
    return [
        sys.executable,
        "-m",
        "lingjax.cli.train",
        f"--config={config}",
        *flags,
        *corpus,
        f"--workdir={workdir}",
        *extra,
    ]


def spawn(cmd: list, env: dict, processes: int, extra=lambda i: ()) -> list[subprocess.Popen]:
    """`cmd` started as the `processes` processes of one local job (jax.distributed on a free
    port of 127.0.0.1); process i also gets `extra(i)`. Wait with `finish`."""
    port = free_port()
    return [
        subprocess.Popen(
            [
                *cmd,
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={processes}",
                f"--process_id={i}",
                *extra(i),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    """Waits for `spawn`ed processes (killing what is left on the way out); every one must exit
    0. Returns their outputs."""
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
        others = "\n".join(o[-2000:] for j, o in enumerate(outs) if j != i)
        assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}\nthe others:\n{others}"
    return outs


def run(*args: str) -> subprocess.CompletedProcess:
    """`python -m <args>` on one CPU device."""
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=cpu_env(), timeout=600
    )


def train_run(workdir, corpus_dir: str, **overrides) -> None:
    """Trains `tiny` with RUN_FLAGS (and overrides) into workdir through the CLI."""
    cmd = train_cmd(workdir, corpus_dir, {**RUN_FLAGS, **overrides})
    r = subprocess.run(cmd, capture_output=True, text=True, env=cpu_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
