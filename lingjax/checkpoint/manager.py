"""Orbax checkpoints of a training run: async saves, retention for WSM, validated restores that
fall back past corrupt checkpoints, and restores onto any device layout.

    ckpt = Checkpointer(f"{workdir}/checkpoints", cfg.checkpoint)
    ckpt.save(step, state, data_iter=feeder, monitor={...}, config=to_dict(cfg))   # async
    restored = ckpt.restore_latest(abstract_state, target_shardings, data_iter=feeder)

A checkpoint is the directory `<step>/` with the items
  state      the train state (params, optimizer state, expert-bias buffers, anomaly statistics,
             RNG key, step), restored with the target shardings the caller asks for;
  data_iter  the data-iterator state of every process (Grain's per-process JSON files);
  monitor    the anomaly monitor's counters (JSON);
  config     the resolved config that produced it (JSON).
Orbax writes into `<step>.orbax-checkpoint-tmp*` and renames when all is written, so a crash
mid-save leaves a temporary directory that is ignored and removed. What orbax does not check on
a local disk, `validate()` does: the commit marker, readable step metadata, every item present.
A checkpoint that fails validation or restore is reported, moved to
`<workdir>/checkpoints.discarded/`, and the previous one is used. If none can be restored,
nothing is moved and the error lists each one's problem: then the cause is more likely a
changed model or code than damaged files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from lingjax.checkpoint import checksums, legacy
from lingjax.checkpoint.params import CHUNK_BYTES
from lingjax.configs.base import CheckpointConfig

if TYPE_CHECKING:
    import grain

COMMIT_MARKER = "commit_success.txt"  # written by orbax as the last file of a committed step
STEP_METADATA = "_CHECKPOINT_METADATA"
CHECKSUMS = "lingjax_checksums.json"  # sizes and CRC-32s of the step's files (checksums.py)


class CheckpointError(RuntimeError):
    """No checkpoint could be restored; the message lists why for each."""


class CheckpointSaveError(CheckpointError):
    """A save failed (a full disk, permissions, a vanished mount); its partial files were
    removed and every earlier checkpoint is intact. The message says where, which step, and how
    to resume."""


_NO_SPACE = ("No space left", "RESOURCE_EXHAUSTED", "ENOSPC", "Disk quota exceeded")


def _quiet_abandoned_writes(log_path: str):
    """An unraisable-exception hook for what a failed orbax save leaves behind: tensorstore
    callbacks of its abandoned writes land on orbax's closed event loop and are reported as
    unraisable (RuntimeError: Event loop is closed), one traceback each; those go to
    `log_path`, everything else to the previous hook."""
    previous = sys.unraisablehook

    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and "Event loop is closed" in str(value):
            with contextlib.suppress(OSError), open(log_path, "a") as f:
                traceback.print_exception(
                    unraisable.exc_type, value, unraisable.exc_traceback, file=f
                )
            return
        previous(unraisable)

    return previous, hook


def _du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


class _OrbaxErrorsToFile(logging.Filter):
    """Orbax logs a failed background save from several threads, each with a traceback; those
    go to `path` (one file per run's checkpoint directory), and the user reads one error."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "orbax" not in (record.pathname or ""):
            return True
        try:
            with open(self.path, "a") as f:
                f.write(logging.Formatter().format(record) + "\n")
        except OSError:  # the disk may be what is full: drop the details, keep the run's error
            pass
        return False


@dataclasses.dataclass
class Restored:
    step: int
    state: Any
    monitor: dict[str, Any] | None
    config: dict[str, Any] | None
    # Newer checkpoints that could not be restored: (step, reason), newest first.
    failed: list[tuple[int, str]] = dataclasses.field(default_factory=list)


@functools.cache
def _frozen_state_class() -> type:
    # Grain is imported only when a data iterator is saved: restoring params (evaluation, HF
    # export, merging) must work where grain is not installed (the GPU benchmark machine).
    import grain

    class FrozenState(grain.DatasetIterator):
        """A data iterator's state captured at save time. Grain's checkpoint handler reads
        `get_state()` when orbax writes the item, which may be after the loop has moved on."""

        def __init__(self, state: dict[str, Any]):
            super().__init__()
            self._state = state

        def __next__(self):
            raise TypeError("FrozenState only carries a saved state; it yields no batches")

        def get_state(self) -> dict[str, Any]:
            return self._state

        def set_state(self, state: dict[str, Any]) -> None:
            raise TypeError("FrozenState is save-only")

    return FrozenState


def default_shardings(abstract_state: Any) -> Any:
    """Every leaf on this process's first device (what a plain `jax.jit(init)` gives)."""
    s = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda _: s, abstract_state)


def with_shardings(abstract_state: Any, target_shardings: Any) -> Any:
    """ShapeDtypeStructs of `abstract_state` placed by `target_shardings`: a pytree of
    `jax.sharding.Sharding` matching the state, one Sharding for every leaf, or None (first
    device)."""
    if target_shardings is None:
        target_shardings = default_shardings(abstract_state)
    elif isinstance(target_shardings, jax.sharding.Sharding):
        target_shardings = jax.tree.map(lambda _: target_shardings, abstract_state)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state,
        target_shardings,
    )


def saved_steps(directory: str | os.PathLike) -> list[int]:
    """The steps of a run's checkpoint directory, oldest first, read from its listing (what a
    reader needs; no CheckpointManager, nothing changes): `<step>/` directories, not the
    temporary ones of a save in progress."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    return sorted(
        int(name)
        for name in os.listdir(directory)
        if name.isdigit() and os.path.isdir(os.path.join(directory, name))
    )


def validate_step(directory: str | os.PathLike, step: int, items: Sequence[str]) -> None:
    """Raises ValueError if `step` is not a complete, committed checkpoint with `items`."""
    path = os.path.join(os.fspath(directory), str(step))
    if not os.path.isfile(os.path.join(path, COMMIT_MARKER)):
        raise ValueError(f"no commit marker ({COMMIT_MARKER}): the save did not finish")
    try:
        with open(os.path.join(path, STEP_METADATA)) as f:
            handlers = json.load(f)["item_handlers"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable {STEP_METADATA}: {first_line(e)}") from e
    for item in items:
        if item not in handlers or not os.path.isdir(os.path.join(path, item)):
            raise ValueError(f"item {item!r} is missing")
    sums = os.path.join(path, CHECKSUMS)
    if os.path.isfile(sums):  # checkpoints of lingjax before 2026-12 have none
        try:
            with open(sums) as f:
                expected = json.load(f)["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"unreadable {CHECKSUMS}: {first_line(e)}") from e
        checksums.verify(path, expected, under=items)


def seal_step(directory: str | os.PathLike, step: int) -> None:
    """Records the checksums of committed checkpoint `step` (once; primary process only)."""
    path = os.path.join(os.fspath(directory), str(step))
    target = os.path.join(path, CHECKSUMS)
    if jax.process_index() != 0 or os.path.exists(target) or not os.path.isdir(path):
        return
    files = checksums.file_checksums(path, skip=(CHECKSUMS,))
    tmp = f"{target}.tmp"
    with open(tmp, "w") as f:
        json.dump({"algorithm": "crc32", "files": files}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


class Checkpointer:
    """One run's checkpoint directory (an orbax CheckpointManager with lingjax's items)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        cfg: CheckpointConfig | None = None,
        *,
        read_only: bool = False,
        log: Callable[[str], None] = print,
    ):
        cfg = cfg or CheckpointConfig()
        self.directory = os.path.abspath(os.fspath(directory))
        self.discard_dir = self.directory.rstrip("/") + ".discarded"
        self._log = log
        policy: Any = ocm.LatestN(n=cfg.keep)
        if cfg.keep_every_steps:
            # Every M-th step stays for checkpoint merging (WSM, docs/ling_spec.md §4).
            policy = ocm.AnyPreservationPolicy(
                [policy, ocm.EveryNSteps(interval_steps=cfg.keep_every_steps)]
            )
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                enable_async_checkpointing=cfg.async_save,
                preservation_policy=policy,
                # Leftovers of a save that was killed; its previous step restores fine.
                cleanup_tmp_directories=not read_only,
                create=not read_only,
                read_only=read_only,
            ),
        )
        # Orbax removes those leftovers in a background thread and waits for it only before
        # its next save; wait now, so restore and discard see a settled directory (orbax
        # 0.12 has no public hook for this; without the attribute there is nothing to wait).
        settle = getattr(self._mgr, "_maybe_await_cleanup_tmp_directory", None)
        if settle is not None:
            settle()
        self._saving: int | None = None  # the step of the save in flight, if any
        self._failed = False  # a save failed and was reported: later waits have nothing to add
        self._unsealed: list[int] = []  # committed-or-in-flight saves without checksums yet
        self._filter = None
        if not read_only:
            log_path = os.path.join(os.path.dirname(self.directory), "checkpoint_errors.log")
            self._filter = _OrbaxErrorsToFile(log_path)
            logging.getLogger("absl").addFilter(self._filter)
            self._previous_hook, sys.unraisablehook = _quiet_abandoned_writes(log_path)

    # ------------------------------------------------------------------------ save

    def all_steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_iter: grain.DatasetIterator | None = None,
        monitor: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> bool:
        """Starts saving `step` (returns once the arrays are copied off the devices; the files
        are written in the background). False if that step is already saved."""
        self.wait()  # a failure of the previous save is reported here, before starting another
        if step in self._mgr.all_steps():
            return False
        # Chunks of at most CHUNK_BYTES: merges and conversions read a few MiB at a time.
        save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), state)
        items: dict[str, Any] = {"state": ocp.args.StandardSave(state, save_args)}
        if data_iter is not None:
            import grain

            frozen = _frozen_state_class()(copy.deepcopy(data_iter.get_state()))
            items["data_iter"] = grain.checkpoint.CheckpointSave(frozen)
        if monitor is not None:
            items["monitor"] = ocp.args.JsonSave(monitor)
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        self._saving = step
        try:
            started = self._mgr.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # orbax and tensorstore raise many types
            raise self._save_failed(step, e) from None
        if started:
            self._unsealed.append(step)
        else:
            self._saving = None
        return started

    def wait(self) -> None:
        """Blocks until every started save is committed; CheckpointSaveError if one failed."""
        if self._failed:
            return
        try:
            self._mgr.wait_until_finished()
        except Exception as e:
            step, self._saving = self._saving, None
            raise self._save_failed(step, e) from None
        self._saving = None
        # Committed: record what was written (retention may have removed some already).
        for step in self._unsealed:
            try:
                seal_step(self.directory, step)
            except OSError as e:
                raise self._save_failed(step, e) from None
        self._unsealed.clear()

    def _save_failed(self, step: int | None, e: BaseException) -> CheckpointSaveError:
        """The one error a failed save becomes, after removing its partial files."""
        self._saving, self._failed = None, True
        partial = (
            [
                os.path.join(self.directory, name)
                for name in os.listdir(self.directory)
                if name.split(".")[0] == str(step) and "tmp" in name
            ]
            if os.path.isdir(self.directory)
            else []
        )
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(Exception):
            self._mgr.reload()
        kept = saved_steps(self.directory)
        where = f"checkpoint {step} to {self.directory}" if step is not None else self.directory
        text = " ".join(str(e).split())
        if any(m in text for m in _NO_SPACE) or getattr(e, "errno", None) == 28:
            need = _du(os.path.join(self.directory, str(kept[-1]))) if kept else 0
            free = shutil.disk_usage(self.directory).free if os.path.isdir(self.directory) else 0
            size = f" (a checkpoint takes about {_mib(need)}; {_mib(free)} free)" if need else ""
            why = f"no space left on the device writing {where}{size}"
            fix = "Free space there (or lower checkpoint.keep / keep_every_steps)"
        else:
            why = f"could not write {where}: {text[:300]}"
            fix = "Fix the cause (permissions, the mount)"
        if kept:
            state = f"checkpoints {', '.join(map(str, kept))} are intact"
            resume = f"rerun the same command to resume from step {kept[-1]}"
        else:
            state, resume = "no earlier checkpoint exists", "rerun the same command (from step 0)"
        details = f" (details: {self._filter.path})" if self._filter else ""
        return CheckpointSaveError(
            f"{why}. Removed the partial save; {state}. {fix}, then {resume}{details}."
        )

    def close(self) -> None:
        # A failed save was reported by wait(); closing after it has nothing more to say.
        with contextlib.suppress(Exception):
            self._mgr.close()
        if self._filter is not None and not self._failed:  # after a failure: kept until exit
            logging.getLogger("absl").removeFilter(self._filter)
            sys.unraisablehook = self._previous_hook
            self._filter = None

    # ------------------------------------------------------------------------ restore

    def validate(self, step: int, items: Sequence[str]) -> None:
        """Raises ValueError if `step` is not a complete, committed checkpoint with `items`."""
        validate_step(self.directory, step, items)

    def restore(
        self,
        step: int,
        abstract_state: Any,
        target_shardings: Any = None,
        *,
        data_iter: grain.DatasetIterator | None = None,
        items: Sequence[str] = ("state", "monitor", "config"),
    ) -> Restored:
        """Restores checkpoint `step` (validated first; raises on any problem).

        Args:
          abstract_state: the state's structure, shapes and dtypes (`jax.eval_shape`).
          target_shardings: where to put each leaf (see `with_shardings`): any mesh and any
            device count; the arrays are read straight into that layout.
          data_iter: if given, its state is set from the checkpoint (this process's share).
          items: which of "state", "monitor", "config" to read.
        """
        wanted = list(items) + (["data_iter"] if data_iter is not None else [])
        self.validate(step, wanted)
        args: dict[str, Any] = {}
        split = False
        if "state" in items:
            target = with_shardings(abstract_state, target_shardings)
            # Saved before the experts' gate and up were fused: read them apart, stack below.
            split = legacy.split_experts(os.path.join(self.directory, str(step), "state"))
            args["state"] = ocp.args.StandardRestore(
                legacy.split_target(target) if split else target
            )
        for name in ("monitor", "config"):
            if name in items:
                args[name] = ocp.args.JsonRestore()
        if data_iter is not None:
            import grain

            args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self._mgr.restore(step, args=ocp.args.Composite(**args))
        state = out["state"] if "state" in items else None
        if split:
            state = legacy.fuse(state, target)
            self._log(
                f"checkpoint {step} holds the routed experts as w_gate and w_up (saved before "
                "they were fused): restored them stacked as w_gate_up, optimizer moments too"
            )
        saved_step = getattr(state, "step", None)
        if saved_step is not None and int(saved_step) != step:
            raise ValueError(f"the state inside says step {int(saved_step)}, not {step}")
        return Restored(
            step=step,
            state=state,
            monitor=out["monitor"] if "monitor" in items else None,
            config=out["config"] if "config" in items else None,
        )

    def restore_latest(
        self,
        abstract_state: Any,
        target_shardings: Any = None,
        *,
        data_iter: grain.DatasetIterator | None = None,
        items: Sequence[str] = ("state", "monitor", "config"),
        before: int | None = None,
    ) -> Restored | None:
        """The newest checkpoint (below step `before`, if given) that restores; newer ones that
        fail are reported and moved aside. None if there is no checkpoint at all; raises
        `CheckpointError` if there are some but none restores."""
        failed: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            if before is not None and step >= before:
                continue
            try:
                restored = self.restore(
                    step, abstract_state, target_shardings, data_iter=data_iter, items=items
                )
            except Exception as e:  # orbax and tensorstore raise many types
                failed.append((step, first_line(e)))  # reported once it is clear what is used
                continue
            for bad, reason in failed:
                self.discard(bad, "corrupt")
                self._log(
                    f"checkpoint {bad} is damaged ({reason}); moved to {self.discard_dir}, "
                    f"using checkpoint {step}"
                )
            restored.failed = failed
            return restored
        if failed:
            lines = "\n".join(f"  step {s}: {r}" for s, r in failed)
            raise CheckpointError(
                f"no checkpoint in {self.directory} could be restored:\n{lines}\n"
                "If the model or optimizer changed, train in a new --workdir; if the files are "
                "damaged, move the bad step directories away (the run then starts from the "
                "newest one left, or from scratch)."
            )
        return None

    # ------------------------------------------------------------------------ discard

    def discard(self, step: int, reason: str) -> str | None:
        """Moves checkpoint `step` to `<directory>.discarded/<step>.<reason>[.n]`, out of the
        way of new saves and restores (kept, not deleted, for inspection). Primary process
        only; the others wait for it."""
        dest = None
        src = os.path.join(self.directory, str(step))
        if jax.process_index() == 0 and os.path.isdir(src):
            os.makedirs(self.discard_dir, exist_ok=True)
            dest = os.path.join(self.discard_dir, f"{step}.{reason}")
            n = 1
            while os.path.exists(dest):
                dest, n = os.path.join(self.discard_dir, f"{step}.{reason}.{n}"), n + 1
            shutil.move(src, dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"lingjax_discard_{step}_{time.time_ns()}")
        self._mgr.reload()
        return dest

    def discard_after(self, step: int, reason: str) -> list[int]:
        """Discards every checkpoint newer than `step` (a rollback abandons them)."""
        self.wait()
        newer = [s for s in self.all_steps() if s > step]
        for s in newer:
            self.discard(s, reason)
        return newer


def restore(
    directory: str | os.PathLike,
    abstract_state: Any,
    target_shardings: Any = None,
    *,
    step: int | None = None,
    data_iter: grain.DatasetIterator | None = None,
    items: Sequence[str] = ("state", "monitor", "config"),
) -> Restored:
    """Reads a run's checkpoint onto any device layout without changing the directory.

    `step=None` takes the newest one that restores (corrupt newer ones are skipped, not moved).
    `target_shardings`: a pytree of `jax.sharding.Sharding` matching `abstract_state` (e.g.
    NamedShardings of a new mesh with a different device count), one Sharding for all leaves,
    or None for this process's first device.
    """
    ckpt = Checkpointer(directory, read_only=True)
    try:
        steps = [step] if step is not None else list(reversed(ckpt.all_steps()))
        if not steps:
            raise CheckpointError(f"no checkpoint in {ckpt.directory}")
        errors = []
        for s in steps:
            try:
                return ckpt.restore(
                    s, abstract_state, target_shardings, data_iter=data_iter, items=items
                )
            except Exception as e:  # any failure: try the previous one
                errors.append(f"  step {s}: {first_line(e)}")
        raise CheckpointError(f"cannot restore from {ckpt.directory}:\n" + "\n".join(errors))
    finally:
        ckpt.close()
