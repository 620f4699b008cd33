"""A save that fails (a full disk, a file the filesystem refuses) stops the run with one clear
error naming the path and the step, removes the partial save, keeps every earlier checkpoint,
exits 1, and a rerun after the cause is fixed resumes from the last good checkpoint.

The full disk is a real 12 MB tmpfs (mounting needs root, which the CI machines have); the other
failure is a per-process file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG), which
needs nothing."""

import json
import os
import resource
import signal
import subprocess

import pytest

from tests.support.cli import cpu_env, train_cmd

OVERRIDES = {
    "model.num_layers": 1,
    "train.steps": 15,
    "train.log_every": 5,
    "train.batch_size": 2,
    "train.seq_len": 32,
    "checkpoint.every_steps": 5,
    "checkpoint.keep": 10,
    "mesh.data": 1,
    "train.schedule_steps": 1000,  # the shared host-logic config (see test_resume.py)
}


def _cmd(workdir, corpus_dir):
    return train_cmd(workdir, corpus_dir, OVERRIDES)


def _env():
    return cpu_env(devices=1)


def _leftovers(workdir):
    ckpts = os.path.join(workdir, "checkpoints")
    return [n for n in os.listdir(ckpts) if not n.isdigit()] if os.path.isdir(ckpts) else []


def _steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_with_one_error_and_a_rerun_resumes(small_disk, corpus_dir):
    workdir = small_disk / "run"
    r = subprocess.run(_cmd(workdir, corpus_dir), env=_env(), capture_output=True, text=True)
    assert r.returncode == 1, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no space left on the device"), lines[:5]
    msg = lines[0]
    assert f"{workdir}/checkpoints" in msg and "Removed the partial save" in msg
    assert "a checkpoint takes about" in msg and "rerun the same command to resume" in msg
    assert not _leftovers(workdir)  # no *.orbax-checkpoint-tmp* left behind
    kept = sorted(int(n) for n in os.listdir(workdir / "checkpoints"))
    assert kept and f"resume from step {kept[-1]}" in msg
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    r = subprocess.run(_cmd(workdir, corpus_dir), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from checkpoint {kept[-1]}" in r.stdout
    assert _steps(workdir) == [5, 10, 15]  # every step once, in order


def _limit_file_size(limit: int):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def test_another_save_failure_is_named_and_nothing_half_written_stays(tmp_path, corpus_dir):
    workdir = tmp_path / "run"
    env = {**_env(), "JAX_ENABLE_COMPILATION_CACHE": "false"}
    r = subprocess.run(
        _cmd(workdir, corpus_dir),
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(1 << 20),  # the checkpoint's arrays file is larger
    )
    assert r.returncode == 1, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not write checkpoint 5"), lines
    assert "no earlier checkpoint exists" in lines[0]
    assert not _leftovers(workdir) and not os.listdir(workdir / "checkpoints")
    r = subprocess.run(_cmd(workdir, corpus_dir), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _steps(workdir) == [5, 10, 15]
