"""One writer per training workdir: a lease file with a heartbeat.

    lock = WorkdirLock.acquire(workdir)      # WorkdirLockedError naming the holder
    ...                                      # a thread renews the lease every `heartbeat` s
    lock.check()                             # WorkdirLockedError if another writer took over
    lock.release()

`<workdir>/writer.lock` holds the writer's host, pid, start time and last heartbeat. A second run
on the same workdir (a Slurm requeue while the old job still runs, a second terminal) is refused
with an error naming the holder. A lock left by a dead writer does not block a resume: on the
same host a lock whose pid is gone is taken over at once; on any host (a shared file system) a
lock whose heartbeat is older than its lease is taken over; `takeover=True` (the CLI's
--takeover_workdir) takes it over regardless, for a node lost while its lease is still fresh.

Creation is atomic on local disks and NFS (a hard link of a fully written temporary file).
Takeovers write the new lock and read it back: if two processes race for a stale lock, the one
whose token is not in the file loses and is refused. Readers (evaluation, merging, export) take
no lock.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

LOCK_FILE = "writer.lock"
LEASE_SECONDS = 120.0
HEARTBEAT_SECONDS = 10.0


class WorkdirLockedError(RuntimeError):
    """Another process writes to the workdir; the message names it and what to do."""


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def read_lock(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The holder's record, or None (no lock, or an unreadable one: a torn write is stale)."""
    try:
        with open(os.path.join(os.fspath(workdir), LOCK_FILE)) as f:
            record = json.load(f)
        return record if isinstance(record, dict) and "token" in record else None
    except (OSError, ValueError):
        return None


def stale_reason(record: dict[str, Any] | None, now: float | None = None) -> str | None:
    """Why `record`'s writer no longer holds the workdir, or None while it does."""
    if record is None:
        return "the lock file is unreadable"
    now = time.time() if now is None else now
    age = now - float(record.get("heartbeat", 0))
    lease = float(record.get("lease_seconds", LEASE_SECONDS))
    if record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", -1))):
        return f"its process {record.get('pid')} on this host is gone"
    if age > lease:
        return f"its last heartbeat is {age:.0f} s old (the lease is {lease:.0f} s)"
    return None


def describe(record: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    age = now - float(record.get("heartbeat", now))
    return (
        f"pid {record.get('pid')} on host {record.get('host')} (started {record.get('started')}, "
        f"last heartbeat {age:.0f} s ago)"
    )


class WorkdirLock:
    """The workdir's writer lease, held by this process (see the module docstring)."""

    def __init__(self, workdir: str, record: dict[str, Any], heartbeat: float):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.record = record
        self.lost: str | None = None  # set when another writer took the workdir over
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat,), name="workdir-lock", daemon=True
        )
        self._thread.start()

    @classmethod
    def acquire(
        cls,
        workdir: str | os.PathLike,
        *,
        takeover: bool = False,
        lease: float = LEASE_SECONDS,
        heartbeat: float = HEARTBEAT_SECONDS,
        log=print,
    ) -> WorkdirLock:
        workdir = os.fspath(workdir)
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, LOCK_FILE)
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _now_iso(),
            "heartbeat": time.time(),
            "lease_seconds": lease,
            "token": uuid.uuid4().hex,
        }
        tmp = _write_tmp(path, record)
        try:
            try:
                os.link(tmp, path)  # atomic: fails if a lock exists
                return cls(workdir, record, heartbeat)
            except FileExistsError:
                pass
            holder = read_lock(workdir)
            why = "--takeover_workdir was given" if takeover else stale_reason(holder)
            if why is None:
                raise WorkdirLockedError(
                    f"{workdir} is being trained by {describe(holder)}; one run writes a workdir "
                    "at a time. Wait for it to finish or stop it; if that process is gone for "
                    "good (a lost node) and its lease has not expired yet, rerun with "
                    "--takeover_workdir"
                )
            os.replace(tmp, path)
            time.sleep(0.05)  # a racing taker's replace lands before our read-back
            if (read_lock(workdir) or {}).get("token") != record["token"]:
                raise WorkdirLockedError(
                    f"{workdir}: another process took over the stale lock at the same time; "
                    "only one run may write it"
                )
            old = describe(holder) if holder else "an unreadable lock"
            log(f"took over {path} from {old}: {why}")
            return cls(workdir, record, heartbeat)
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            current = read_lock(self.workdir)
            if current is not None and current.get("token") != self.record["token"]:
                self.lost = describe(current)
                return
            self.record["heartbeat"] = time.time()
            tmp = _write_tmp(self.path, self.record)
            with contextlib.suppress(OSError):
                os.replace(tmp, self.path)

    def check(self) -> None:
        """WorkdirLockedError if another writer took the workdir over since we acquired it."""
        if self.lost:
            raise WorkdirLockedError(
                f"{self.workdir} was taken over by {self.lost}; this run stops writing it"
            )

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if (read_lock(self.workdir) or {}).get("token") == self.record["token"]:
            with contextlib.suppress(OSError):
                os.remove(self.path)


def _write_tmp(path: str, record: dict[str, Any]) -> str:
    tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    return tmp
