"""One writer per workdir (lingjax/checkpoint/lock.py): a second writer is refused naming the
holder; a lock of a dead process, or one whose heartbeat stopped, is taken over; a takeover is
noticed by the old writer; and end to end, a second `cli.train` on a running workdir exits 2
while the first goes on, and after a kill -9 the rerun resumes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lingjax.checkpoint.lock import LOCK_FILE, WorkdirLock, WorkdirLockedError, read_lock
from tests.support.cli import cpu_env, train_cmd


def _plant(workdir, **record):
    base = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": "2026-12-01T00:00:00+00:00",
        "heartbeat": time.time(),
        "lease_seconds": 120.0,
        "token": "someone-else",
    }
    (workdir / LOCK_FILE).write_text(json.dumps({**base, **record}))


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    lock = WorkdirLock.acquire(tmp_path)
    try:
        with pytest.raises(WorkdirLockedError) as e:
            WorkdirLock.acquire(tmp_path)
        msg = str(e.value)
        assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
        assert "--takeover_workdir" in msg
    finally:
        lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
    WorkdirLock.acquire(tmp_path).release()  # released: free again


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize(
    "record, taken",
    [
        ({"pid": "DEAD"}, "is gone"),  # killed -9 on this host
        ({"host": "node-lost", "heartbeat": time.time() - 600}, "heartbeat is"),  # shared FS
        ({"host": "node-alive"}, None),  # another host, fresh heartbeat: it still writes
    ],
)
def test_stale_locks_are_taken_over_and_live_ones_refused(tmp_path, record, taken):
    if record.get("pid") == "DEAD":
        record = {**record, "pid": _dead_pid()}
    _plant(tmp_path, **record)
    logged = []
    if taken is None:
        with pytest.raises(WorkdirLockedError, match="node-alive"):
            WorkdirLock.acquire(tmp_path, log=logged.append)
        lock = WorkdirLock.acquire(tmp_path, takeover=True, log=logged.append)  # a lost node
        assert "--takeover_workdir was given" in logged[-1]
    else:
        lock = WorkdirLock.acquire(tmp_path, log=logged.append)
        assert taken in logged[-1]
    assert read_lock(tmp_path)["token"] == lock.record["token"]
    lock.release()


def test_the_heartbeat_renews_the_lease_and_a_takeover_is_noticed(tmp_path):
    lock = WorkdirLock.acquire(tmp_path, heartbeat=0.05)
    try:
        first = read_lock(tmp_path)["heartbeat"]
        time.sleep(0.3)
        assert read_lock(tmp_path)["heartbeat"] > first
        lock.check()
        _plant(tmp_path, host="other-node", pid=12345)  # someone took it over
        time.sleep(0.3)
        with pytest.raises(WorkdirLockedError, match="taken over by pid 12345 on host other-node"):
            lock.check()
    finally:
        lock.release()
    assert read_lock(tmp_path)["token"] == "someone-else"  # release leaves a foreign lock alone


def test_two_runs_on_one_workdir(tmp_path, corpus_dir):
    workdir = tmp_path / "run"
    env = cpu_env(devices=1)
    flags = {
        "model.num_layers": 1,
        "train.steps": 100000,
        "train.log_every": 5,
        "train.batch_size": 2,
        "train.seq_len": 32,
        "checkpoint.every_steps": 5,
        "mesh.data": 1,
        "train.schedule_steps": 1000,  # the shared host-logic config (see test_resume.py)
        "data.corpus": corpus_dir,
    }

    def cmd(**changes):
        return train_cmd(workdir, None, {**flags, **changes})

    first = subprocess.Popen(cmd(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not (workdir / "checkpoints" / "10").exists():
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.2)
        second = subprocess.run(cmd(), env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is being trained by pid {first.pid}" in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    last = max(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
    third = subprocess.run(
        cmd(**{"train.steps": last + 5}), env=env, capture_output=True, text=True, timeout=300
    )
    assert third.returncode == 0, third.stderr[-2000:]
    assert "took over" in third.stdout and f"resumed from checkpoint {last}" in third.stdout
    assert not (workdir / LOCK_FILE).exists()  # released at the end
