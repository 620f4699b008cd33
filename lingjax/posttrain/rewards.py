"""Verifiable rewards for C3PO: `reward(record, response) -> float`, where `record` is the
prompt's line of data.instruct (its "answer", "tests", ...) and `response` the decoded answer.

    fn = reward_function("exact")            # or "code", or "my_module:my_reward"
    fn({"prompt": "2+3=", "answer": "5"}, "5")   # 1.0

exact  1.0 if the response's first line, stripped, equals the answer (or one of a list of
       answers), else 0.0.
code   1.0 if the line's "tests" (Python statements, typically asserts) pass against the
       response's code (a ```python fenced block if there is one, else the whole response),
       run in a fresh subprocess; 0.0 on failure, error or timeout.

The code reward's subprocess (`run_python`): `python -I` (no site packages, no environment,
no user directory) in a new temporary directory that is its working directory and is removed
afterwards; its own session, killed with its children at the timeout; CPU, memory, file-size
and process-count limits; no network when the kernel lets it enter a network namespace of its
own (`unshare -rn`, Linux); and a guard, installed before the code runs, that refuses writes,
deletes and renames outside the temporary directory, and running programs or opening sockets.
The guard catches a model's sloppy or curious code, not an attacker: Python code can still
reach the operating system through ctypes or a C extension. Run untrusted code in a
container.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

Reward = Callable[[dict, str], float]

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)

# Installed in the child before the response runs (the child's stdin carries the program).
_GUARD = r"""
import builtins, io, os, sys
_ROOT = os.path.realpath(os.getcwd())
def _inside(path):
    try:
        p = os.path.realpath(os.fspath(path) if not isinstance(path, int) else ".")
    except TypeError:
        return False
    return p == _ROOT or p.startswith(_ROOT + os.sep)
def _refuse(what):
    def f(*a, **k):
        raise PermissionError(f"{what} is not allowed in the reward sandbox")
    return f
_open = builtins.open
def _guarded_open(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError(f"writing {file!r} outside the sandbox directory")
    return _open(file, mode, *a, **k)
builtins.open = io.open = _guarded_open
_os_open = os.open
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _guarded_os_open(path, flags, *a, **k):
    if flags & _WRITES and not _inside(path):
        raise PermissionError(f"writing {path!r} outside the sandbox directory")
    return _os_open(path, flags, *a, **k)
os.open = _guarded_os_open
for _name in ("remove", "unlink", "rmdir", "removedirs", "mkdir", "makedirs", "chmod",
              "chown", "link", "symlink", "truncate", "utime"):
    if hasattr(os, _name):
        _f = getattr(os, _name)
        def _g(path, *a, _f=_f, _name=_name, **k):
            if not _inside(path):
                raise PermissionError(f"os.{_name}({path!r}) outside the sandbox directory")
            return _f(path, *a, **k)
        setattr(os, _name, _g)
for _name in ("rename", "replace"):
    _f = getattr(os, _name)
    def _g(src, dst, *a, _f=_f, _name=_name, **k):
        if not (_inside(src) and _inside(dst)):
            raise PermissionError(f"os.{_name} outside the sandbox directory")
        return _f(src, dst, *a, **k)
    setattr(os, _name, _g)
for _name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve",
              "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve",
              "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp"):
    if hasattr(os, _name):
        setattr(os, _name, _refuse(f"os.{_name}"))
for _mod in ("subprocess", "socket", "ctypes", "multiprocessing", "shutil", "_socket"):
    sys.modules[_mod] = None
del _name, _mod
"""


def _network_isolation() -> list[str]:
    """The command prefix that gives the child a network namespace of its own (no interfaces
    up: no network), if this machine allows it, else []."""
    unshare = shutil.which("unshare")
    if not unshare or not sys.platform.startswith("linux"):
        return []
    try:
        ok = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [unshare, "-rn"] if ok.returncode == 0 else []


_NET: list[str] | None = None


def _limits(timeout: float) -> Callable[[], None]:
    def apply() -> None:
        import resource

        cpu = int(timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 24, 1 << 24))  # 16 MiB a file
        resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))

    return apply


def run_python(code: str, timeout: float = 5.0) -> tuple[bool, str]:
    """(exited with status 0, the last lines of its output) of running `code` sandboxed
    (module docstring); (False, "timeout") when it runs out of time."""
    global _NET
    if _NET is None:
        _NET = _network_isolation()
    workdir = tempfile.mkdtemp(prefix="lingjax-reward-")
    program = _GUARD + "\n" + code
    try:
        proc = subprocess.Popen(
            [*_NET, sys.executable, "-I", "-"],
            cwd=workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir},
            start_new_session=True,
            preexec_fn=_limits(timeout),
        )
        try:
            out, _ = proc.communicate(program.encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it started
            proc.communicate()
            return False, "timeout"
        return proc.returncode == 0, out.decode(errors="replace")[-2000:]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def exact_reward(record: dict, response: str) -> float:
    answers = record.get("answer")
    answers = answers if isinstance(answers, list) else [answers]
    got = _first_line(response)
    return float(any(got == _first_line(str(a)) for a in answers if a is not None))


def code_of(response: str) -> str:
    """The code of a response: its first ```python fenced block, else the whole text."""
    m = _FENCE.search(response)
    return m.group(1) if m else response


def make_code_reward(timeout: float) -> Reward:
    def code_reward(record: dict, response: str) -> float:
        tests = record.get("tests")
        if not isinstance(tests, str) or not tests.strip():
            return 0.0
        ok, _ = run_python(code_of(response) + "\n\n" + tests, timeout=timeout)
        return float(ok)

    return code_reward


class RewardError(ValueError):
    """A reward function that cannot be used; the message says why and how to fix it."""


def reward_function(spec: str, timeout: float = 5.0) -> Reward:
    """ "exact", "code", or "module:function" (a function (record, response) -> float)."""
    if spec == "exact":
        return exact_reward
    if spec == "code":
        return make_code_reward(timeout)
    module, _, name = spec.partition(":")
    try:
        fn: Any = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RewardError(
            f"train.c3po.reward={spec!r}: cannot import {name} from {module} ({e}); use exact, "
            "code, or module:function on the Python path"
        ) from None
    if not callable(fn):
        raise RewardError(f"train.c3po.reward={spec!r} is not a function")
    return fn


def check_records(kind: str, records: list[dict], where: list[str]) -> None:
    """The prompt lines have what the reward reads: an "answer" (exact) or "tests" (code)."""
    need = {"exact": "answer", "code": "tests"}.get(kind)
    if need is None:
        return
    for rec, at in zip(records, where, strict=True):
        if need not in rec:
            raise RewardError(f'{at}: train.c3po.reward={kind} needs "{need}" on every prompt')
