"""The training loop: host-side work around the pure, jitted step (data, logging, timing,
checkpoints, preemption, the anomaly policy).

summary = lingjax.train.train(cfg, workdir="runs/x")

Running it again with the same workdir resumes from the newest good checkpoint, exactly: the
final params and metrics.jsonl match an uninterrupted run's bit for bit. What makes that hold:
the state, the data-iterator state (with the queue of batches to retry) and the anomaly
counters are saved together at step boundaries; every host decision is a deterministic function
of step verdicts; metrics.jsonl is cut back to the resumed step; the LR schedule's length is
fixed in config.json at the first start (lingjax/train/resume.py).

The loop never waits on the device between steps: it reads step s's verdict (a few scalars)
after dispatching step s+1, and at the boundaries where it logs or saves. A rollback decided on
step s therefore discards the already-dispatched step s+1 and hands its batch back to the feeder,
so what happens does not depend on where the loop happened to wait.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from lingjax import parallel
from lingjax.checkpoint import CHECKPOINT_DIR, CONFIG_FILE, Checkpointer
from lingjax.checkpoint.lock import WorkdirLock, WorkdirLockedError
from lingjax.checkpoint.manager import saved_steps
from lingjax.checkpoint.params import ParamsCheckpointError, is_params_dir, read_config
from lingjax.checkpoint.run import PARAMS_CHECKPOINT_DIR, is_run_dir, load
from lingjax.configs import (
    Config,
    ConfigError,
    MeshConfig,
    ModelConfig,
    OptimizerConfig,
    PenaltyConfig,
    StepConfig,
    to_dict,
    to_json,
)
from lingjax.data import MixtureMeter, make_train_iterator
from lingjax.data.sources import open_sources, save_run_tokenizer
from lingjax.data.tokenizer import save_tokenizer
from lingjax.kernels.attention import check_available as check_attention_impl
from lingjax.model import flops_per_token, peak_flops
from lingjax.train.anomaly import VERDICT_KEYS, AnomalyMonitor, Outcome
from lingjax.train.dpo import reference_logprobs
from lingjax.train.evaluation import EvalInputs, Evaluator, cross_entropy_step
from lingjax.train.evaluation import check_inputs as check_eval_inputs
from lingjax.train.faults import FaultPlan
from lingjax.train.instruct import Instruct, PolicyAccess, load_instruct
from lingjax.train.local_host import LocalSGDHost
from lingjax.train.metrics import METRICS_FILE, MetricsWriter, read_metrics
from lingjax.train.optimizer import make_optimizer
from lingjax.train.preemption import PreemptionWatcher
from lingjax.train.replay import RetryEntry, RetryFeeder
from lingjax.train.replicas import ShardedLocalSGD, shard_local_sgd
from lingjax.train.resume import check_resume_config, schedule_overrun
from lingjax.train.sharded import ShardedTraining, shard_training
from lingjax.train.state import TrainState
from lingjax.train.step import device_inputs, metrics_summary
from lingjax.train.sync_plan import SyncPlan
from lingjax.train.timing import SlowStepDetector

# What a sync step reports to the host (sync()'s info, prefixed).
SYNC_KEYS = ("sync_eliminated", "sync_norms", "sync_weight", "sync_local_steps")


class TrainingAnomalyError(RuntimeError):
    """The anomaly policy gave up (too many rollbacks); see events.jsonl."""


def write_config(cfg: Config, workdir: str) -> None:
    """The resolved config, written atomically (resume reads this file)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(to_json(cfg) + "\n")
    os.replace(tmp, path)


# Cached so that calling train() again with the same config (notebooks, tests) builds and
# compiles nothing. The init creates the state already placed like a restored one (the step's
# in_shardings), so a fresh and a resumed run hand the step identically placed inputs: one
# compilation.
@functools.lru_cache(maxsize=4)
def _sharded(
    model_cfg: ModelConfig,
    step_cfg: StepConfig,
    opt_cfg: OptimizerConfig,
    mesh_cfg: MeshConfig,
    batch_size: int,
    target: tuple | None,
    penalty: PenaltyConfig | None,
) -> ShardedTraining | ShardedLocalSGD:
    shardings = None if target is None else jax.tree.unflatten(target[0], target[1])
    mesh = parallel.make_mesh(mesh_cfg)
    if penalty is not None:  # local SGD; its host-side keys (sync_every, ...) are not in here
        if shardings is not None:
            raise ConfigError(
                "target_shardings places a synchronous TrainState; with "
                "train.local_sgd.enabled the replicas' layout is fixed (lingjax/train/replicas.py)"
            )
        return shard_local_sgd(
            model_cfg, step_cfg, make_optimizer(opt_cfg), mesh, batch_size, penalty
        )
    return shard_training(
        model_cfg, step_cfg, make_optimizer(opt_cfg), mesh, batch_size, shardings=shardings
    )


def sharded_run(cfg: Config, target_shardings: Any = None) -> ShardedTraining | ShardedLocalSGD:
    """The run of `cfg` laid out on its mesh (cached by the configs the step depends on)."""
    target = None
    if target_shardings is not None:
        leaves, treedef = jax.tree.flatten(target_shardings)
        target = (treedef, tuple(leaves))
    t = cfg.train
    local = t.local_sgd.penalty() if t.local_sgd.enabled else None
    return _sharded(
        cfg.model, t.step_config(), t.optimizer_config(), cfg.mesh, t.batch_size, target, local
    )


@dataclasses.dataclass
class _Pending:
    """A dispatched step whose verdict the host has not read yet."""

    step: int  # 0-based index (state.step when it ran)
    batch: dict[str, np.ndarray]
    entry: RetryEntry | None  # set if the batch was a retry
    metrics: dict[str, jax.Array]
    synced: bool = False  # a local-SGD sync ran before this step (its info is in metrics)


class _Window:
    """Throughput between two logged rows: compiled steps, their wall time and data wait."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.steps, self.data_wait = time.perf_counter(), 0, 0.0

    def add(self, data_wait: float) -> None:
        self.steps += 1
        self.data_wait += data_wait

    def rates(self, tokens_per_step: int) -> dict[str, float | None]:
        elapsed = time.perf_counter() - self.start
        if not self.steps:
            return {"tokens_per_sec": None, "step_time": None, "data_wait_frac": None}
        return {
            "tokens_per_sec": self.steps * tokens_per_step / elapsed,
            "step_time": elapsed / self.steps,
            "data_wait_frac": self.data_wait / elapsed,
        }


def train(
    cfg: Config,
    workdir: str,
    *,
    allow_config_change: bool = False,
    faults: FaultPlan | None = None,
    target_shardings: Any = None,
    takeover: bool = False,
    batches: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Train `cfg` until cfg.train.steps steps in `workdir`, resuming what is there.

    Args:
      allow_config_change: resume even if the config differs from the workdir's config.json in
        keys outside `lingjax.train.resume.RESUMABLE_KEYS` (otherwise a ConfigError).
      faults: fault injection for tests and drills (`FaultPlan.parse("nan@5")`); None in runs.
      target_shardings: where to place the state (a TrainState of shardings on the mesh of
        cfg.mesh); None = the layout of lingjax.parallel's rules.
      takeover: take the workdir's writer lock over even while its lease looks fresh (the
        holder's node was lost); a lock left by a dead process is taken over anyway.
      batches: `batches(cfg, instruct, run)` -> a checkpointable iterator of the run's host
        batches, made while training from the run's weights (`run.policy()`, ...: the
        train.instruct.PolicyAccess methods); C3PO's rollouts (lingjax.posttrain.train).

    Returns the last logged metrics (host floats) plus "first_loss", "resumed_from" and
    "preempted" (True if a signal stopped the run after saving). Every problem with the config,
    the workdir or the data is raised before anything is written to the workdir.
    """
    cfg.validate()
    _check_faults(cfg, faults)
    if cfg.train.objective == "c3po" and batches is None:
        raise ConfigError(
            "train.objective=c3po makes its batches by rollouts: train with "
            "lingjax.posttrain.train (python -m lingjax.cli.train does)"
        )
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir} is a file, not a directory; pass a directory")
    parallel.check_config(cfg, parallel.mesh_shape(cfg.mesh, jax.device_count()))
    try:  # an attention kernel this backend cannot run fails here, not at the first step
        check_attention_impl(cfg.model.attention.impl, key="model.attention.impl")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg, _ = check_resume_config(workdir, cfg, allow_change=allow_config_change)
    # A missing or foreign corpus, or ids past the vocabulary, fail here (CorpusError), before
    # anything is written to the workdir. Reads the manifests and document lengths only.
    instruct = None
    if cfg.train.objective == "lm":
        sources = open_sources(cfg.data, vocab_size=cfg.model.vocab_size, split="train")
        eval_inputs = check_eval_inputs(cfg, sources)  # capability corpora, task files
    else:  # post-training: data.instruct, read and checked whole (file:line errors)
        instruct = load_instruct(cfg, workdir)
        sources = []
        eval_inputs = check_eval_inputs(cfg, sources, instruct.tokenizer)
    if cfg.train.init_from and not saved_steps(os.path.join(workdir, CHECKPOINT_DIR)):
        check_init_from(cfg)
    if warning := schedule_overrun(cfg):
        print(f"warning: {warning}")
    _check_local_sgd_job(cfg)
    par = sharded_run(cfg, target_shardings)  # a replica split over processes is refused here
    lock = _lock_workdir(workdir, takeover)  # one writer: a second run stops here
    try:
        if jax.process_index() == 0:
            write_config(cfg, workdir)
            if instruct is None:
                save_run_tokenizer(cfg.data, sources, workdir)
            else:
                save_tokenizer(instruct.tokenizer, workdir)
        run = _Run(cfg, workdir, faults or FaultPlan(), par, lock, eval_inputs, instruct, batches)
        try:
            return run.run()
        finally:
            run.close()
    finally:
        if lock is not None:
            lock.release()


def _check_faults(cfg: Config, faults: FaultPlan | None) -> None:
    named = sorted(faults.replicas()) if faults else []
    if not named:
        return
    if not cfg.train.local_sgd.enabled:
        raise ConfigError(
            f"the fault plan names replicas {named}, but this run trains synchronously; drop "
            "the :rK suffixes, or set --config.train.local_sgd.enabled=true"
        )
    if named[-1] >= cfg.mesh.data:
        raise ConfigError(
            f"the fault plan names replica {named[-1]}, but the run has mesh.data="
            f"{cfg.mesh.data} replicas (0..{cfg.mesh.data - 1})"
        )


def _check_local_sgd_job(cfg: Config) -> None:
    """What an agreed (multi-process, timed) local-SGD run cannot do: in-loop evaluation and
    params copies happen at step numbers that its processes reach at different times."""
    ls = cfg.train.local_sgd
    if not (ls.enabled and ls.sync_seconds > 0 and jax.process_count() > 1):
        return
    for key, value, fix in (
        ("eval.every", cfg.eval.every, "score its checkpoints with python -m lingjax.cli.eval"),
        (
            "checkpoint.params_every_steps",
            cfg.checkpoint.params_every_steps,
            "merge its checkpoints with python -m lingjax.cli.merge",
        ),
    ):
        if value:
            raise ConfigError(
                f"{key}={value} with train.local_sgd.sync_seconds={ls.sync_seconds} across "
                f"{jax.process_count()} processes: the processes step at their own pace and "
                f"meet only at syncs; set {key}=0 and {fix}, or sync by steps "
                "(train.local_sgd.sync_seconds=0)"
            )


def check_init_from(cfg: Config) -> None:
    """ConfigError unless train.init_from holds weights of cfg's architecture."""
    path = cfg.train.init_from
    if not (is_run_dir(path) or is_params_dir(path)):
        raise ConfigError(
            f"train.init_from={path!r} is neither a params checkpoint (config.json + variables/) "
            "nor a training workdir (config.json + checkpoints/); pass one of those"
        )
    try:
        have = read_config(path)
    except ParamsCheckpointError as e:
        raise ConfigError(f"train.init_from={path!r}: {e}") from None
    if have.architecture() != cfg.model.architecture():
        diff = [
            f"{k}={getattr(have, k)!r} (the run has {getattr(cfg.model, k)!r})"
            for k in (f.name for f in dataclasses.fields(have))
            if getattr(have.architecture(), k) != getattr(cfg.model.architecture(), k)
        ]
        raise ConfigError(
            f"train.init_from={path!r} holds another model: {', '.join(diff[:4])}; start from "
            "a checkpoint of this architecture, or set --config.model.* to match it"
        )


def _lock_workdir(workdir: str, takeover: bool) -> WorkdirLock | None:
    """Process 0 takes the workdir's writer lock; every process learns whether it could."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock.acquire(workdir, takeover=takeover)
        except WorkdirLockedError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not int(ok) and error is None:
            error = WorkdirLockedError(
                f"{workdir} is locked by another run (process 0 of this job says so)"
            )
    if error is not None:
        raise error
    return lock


class _Run(LocalSGDHost, PolicyAccess):
    def __init__(
        self,
        cfg: Config,
        workdir: str,
        faults: FaultPlan,
        par: ShardedTraining,
        lock: WorkdirLock | None = None,
        eval_inputs: EvalInputs | None = None,
        instruct: Instruct | None = None,
        batches: Callable[..., Any] | None = None,
    ):
        self.cfg, self.workdir, self.faults, self.par, self.lock = cfg, workdir, faults, par, lock
        self.eval_inputs, self.instruct, self.make_batches = eval_inputs, instruct, batches
        self.steps_run = 0  # steps this process dispatched (post-training sources read it)
        self.t = cfg.train
        self.acfg = cfg.train.anomaly
        self.writer = None
        self.watcher = None
        self.ckpt = None
        self.params_ckpt = None
        self.feeder = None
        try:
            self._open()
        except BaseException:  # close what was opened (data threads, the checkpoint writer)
            self.close()
            raise

    def _open(self) -> None:
        cfg, t, par = self.cfg, self.t, self.par
        if isinstance(par, ShardedLocalSGD):
            self.put_batch = lambda batch, whole=True: par.put_batch(device_inputs(batch), whole)
        else:
            self.put_batch = lambda batch, whole=True: par.put_batch(device_inputs(batch))
        if self.make_batches is not None:
            stream = self.make_batches(cfg, self.instruct, self)
        elif self.instruct is not None:
            stream = self.instruct.batches(t, par.data_index, par.data_count, cfg.data.seed)
        else:
            stream = make_train_iterator(
                cfg.data,
                seq_len=t.seq_len,
                batch_size=t.batch_size,
                vocab_size=cfg.model.vocab_size,
                process_index=par.data_index,
                process_count=par.data_count,
            )
        self.stream = stream
        self.feeder = RetryFeeder(stream)
        self.mixture = MixtureMeter(cfg.data)  # realised mixture proportions, logged per row
        self.evaluator = None
        if cfg.eval.every:
            shardings = par.state_shardings
            self.evaluator = Evaluator(
                cfg,
                self.put_batch,
                inputs=self.eval_inputs,
                process_index=par.data_index,
                process_count=par.data_count,
                eval_step=parallel.in_mesh_context(cross_entropy_step(cfg.model), par.mesh),
                mesh=par.mesh,
                workdir=self.workdir,
                shardings={"params": shardings.params, "buffers": shardings.buffers},
                before_merge=self._finish_saves,
            )
        self.monitor = AnomalyMonitor(self.acfg)
        self.slow = SlowStepDetector(self.acfg.slow_step_z, self.acfg.slow_step_warmup)
        self.ckpt = Checkpointer(os.path.join(self.workdir, CHECKPOINT_DIR), cfg.checkpoint)
        self.params_ckpt = None
        if cfg.checkpoint.params_every_steps:
            keep = cfg.checkpoint.params_keep or 10**9  # 0 = all
            self.params_ckpt = Checkpointer(
                os.path.join(self.workdir, PARAMS_CHECKPOINT_DIR),
                dataclasses.replace(cfg.checkpoint, keep=keep, keep_every_steps=0),
            )
        restored = self.ckpt.restore_latest(
            par.abstract_state,
            par.state_shardings,
            data_iter=self.feeder,
            items=("state", "monitor"),
        )
        self.local = isinstance(par, ShardedLocalSGD)
        if restored is not None:
            self.state: TrainState = self._local_view(restored.state)
            self.monitor.load_state_dict(restored.monitor)
            self.start = restored.step
            print(f"resumed from checkpoint {restored.step} in {self.ckpt.directory}")
        else:
            self.state = self._init_state()
            self.start = 0
        self.writer = MetricsWriter(self.workdir, resume_step=self.start, total_steps=t.steps)
        for bad, reason in restored.failed if restored else []:
            self.writer.event(
                {"event": "corrupt_checkpoint", "step": bad, "reason": reason, "used": self.start}
            )
        if self.start:
            self.writer.event({"event": "resume", "step": self.start})
        self.watcher = PreemptionWatcher()
        self.tokens_per_step = t.batch_size * t.seq_len
        self.fpt = flops_per_token(cfg.model, t.seq_len)
        self.peak = t.peak_flops_per_device or peak_flops()
        if not self.peak and jax.process_index() == 0:
            print(
                f"note: no MFU in the logs: the peak FLOP/s of a {jax.devices()[0].device_kind} "
                "device is unknown; set --config.train.peak_flops_per_device to report it"
            )
        if t.objective == "dpo":
            self._dpo_reference()
        self.plan = None
        if self.local:
            ls = t.local_sgd
            agreed = par.multiprocess and ls.sync_seconds > 0
            self.plan = SyncPlan(ls, par.replicas, par.hi - par.lo, agreed=agreed)
            if agreed:  # each process at its own step (the label is process 0's)
                self.start = int(jax.device_get(self.state.replicas.step)[0])
            self._reset_local()
        self.window = _Window()
        self.last_logged = self.start
        self.iter_start: float | None = None  # start of the current loop iteration (timer)
        self.eval_time = 0.0  # seconds the last in-loop evaluation took (for the ETA)

    def _init_state(self) -> TrainState:
        state = self.par.init(jax.random.key(self.t.seed))
        if not self.t.init_from:
            return state
        # Whole on the host, then placed shard by shard: fine up to host memory.
        _, variables = load(self.t.init_from)
        print(f"initialised the weights from {self.t.init_from}")
        if self.local:  # every replica and theta_synced
            return self.par.set_weights(state, variables["params"], variables.get("buffers", {}))
        shard = self.par.state_shardings
        params = jax.device_put(variables["params"], shard.params)
        buffers = jax.device_put(variables.get("buffers", {}), shard.buffers)
        return state.replace(params=params, buffers=buffers)

    def _dpo_reference(self) -> None:
        """DPO: the reference log-probs of every pair, from the initial weights (the state at
        step 0; on a resume without the cache, an initial state made again), onto the
        batches."""
        t = self.t
        state = self.state if self.start == 0 else self._init_state()
        self.stream.ref_logps = reference_logprobs(
            self.instruct.data,
            self.par,
            state.params,
            state.buffers,
            model_cfg=self.cfg.model,
            seq_len=t.seq_len,
            batch_size=t.batch_size,
            source=t.init_from or f"a random init (seed {t.seed})",
            workdir=self.workdir,
        )

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        t, every = self.t, self.cfg.checkpoint.every_steps
        step = self.start
        pending: _Pending | None = None
        summary: dict[str, Any] = {}
        first_loss = None
        preempted = False
        compiled = False
        iter_data, iter_saved = 0.0, False
        while True:
            # ---- boundary: steps [0, step) are dispatched, `pending` is the last of them.
            now = time.perf_counter()
            if self.iter_start is not None:
                self._time_step(step, now - self.iter_start, iter_data, iter_saved)
            self.iter_start, iter_saved = now, False
            stop = self.watcher.should_stop(step)
            last = step >= t.steps
            save = stop or last or (every > 0 and step % every == 0)
            label = step  # of a checkpoint saved here
            decision = self._agree(step, last, stop, save)
            if decision is not None:  # an agreed local-SGD run: process 0 decided
                stop, save, label = decision.preempted, decision.save, decision.label
                last = decision.last and not stop
            evaluate = self.evaluator is not None and self.evaluator.due(step, last)
            log = step % t.log_every == 0 or last or evaluate
            if self.lock is not None and (save or log):
                self.lock.check()  # another run took the workdir over: stop writing it
            if pending is not None and (save or log) and self._process(pending):
                pending = None
                if not self._rollback_is_reset():
                    step = self._rollback(None, step)
                    continue
                self.state = self._reset_replicas(self.state, step)
            if self.local and self._sync_here(step, decision, last, evaluate):
                self._boundary_sync(step)
            if pending is not None and (save or log):
                if log and step > self.last_logged:
                    summary = self._log_row(step, pending.metrics, evaluate)
                    first_loss = summary["loss"] if first_loss is None else first_loss
                pending = None
            if save and (step > self.start or decision is not None):
                iter_saved = self._save(label)
            copy_every = self.cfg.checkpoint.params_every_steps
            if self.params_ckpt and step > self.start and step % copy_every == 0:
                view = self._global_view()
                variables = {"params": view.params, "buffers": view.buffers}
                iter_saved = self.params_ckpt.save(step, variables) or iter_saved
            if last:
                break
            if stop:
                preempted = True
                event = {"event": "preempted", "step": step, "by": self.watcher.signal_name}
                self.writer.event(event)
                break

            # ---- dispatch step `step` (0-based), then read the verdict of the one before.
            self.faults.before_step(step + 1)
            mark = self.feeder.mark()
            t0 = time.perf_counter()
            batch, entry = self.feeder.take(step)
            self.mixture.update(batch)
            ctl, program, synced, whole = self._controls(step, entry)
            device_batch = self.put_batch(self._faulty(batch, step + 1), whole)
            iter_data = time.perf_counter() - t0
            new_state, metrics = program(self.state, device_batch, ctl)
            if self.plan is not None and self.plan.agreed:
                self.plan.took_step()
            if pending is not None and self._process(pending):
                if not self._rollback_is_reset():
                    step, pending = self._rollback(mark, step), None  # new_state is discarded
                    continue
                # The step already ran (a sync in it happened on every process): keep it.
                new_state = self._reset_replicas(new_state, step)
            self.state = new_state
            self.steps_run += 1
            pending = _Pending(step, batch, entry, metrics, synced)
            step += 1
            if compiled:
                self.window.add(iter_data)
            else:  # keep compilation out of the throughput figures and the step timer
                jax.block_until_ready(metrics)
                print(f"step {step}: compiled and ran in {time.perf_counter() - t0:.1f}s")
                compiled = True
                if self.plan is not None:  # the A-EDiT clock does not count the compile
                    self.plan.clock = time.monotonic()
                self.window.reset()
                self.iter_start = None

        if not summary:  # nothing trained in this process: report the run's last row
            rows = read_metrics(os.path.join(self.workdir, METRICS_FILE))
            summary = dict(rows[-1]) if rows else {}
            summary.pop("step", None)
        summary["first_loss"] = first_loss if first_loss is not None else summary.get("loss")
        summary["resumed_from"] = self.start
        summary["preempted"] = preempted
        return summary

    # ------------------------------------------------------------------ pieces

    def _process(self, rec: _Pending) -> bool:
        """Applies the policy to a finished step's verdict; True if it asks for a rollback."""
        verdict = jax.device_get({k: rec.metrics[k] for k in VERDICT_KEYS})
        outcome = Outcome.from_metrics(rec.step, verdict)
        attempts = rec.entry.attempts if rec.entry else 0
        origin = rec.entry.origin if rec.entry else rec.step
        decision = self.monitor.decide(outcome, attempts, origin)
        for e in decision.events:
            self.writer.event(e)
        if rec.synced:
            self._sync_event(rec.step, {k[5:]: rec.metrics[k] for k in SYNC_KEYS})
        if decision.rollback:
            if decision.requeue:  # this batch belongs to the streak: it goes with it
                self.monitor.counters["dropped_batches"] += 1
            return True
        if decision.requeue:
            self.feeder.push(
                rec.batch,
                due=rec.step + self.acfg.retry_delay,
                attempts=decision.attempts,
                origin=origin,
            )
        return False

    def _end_streak(self, now: int) -> tuple[int, int]:
        """The policy gave up on an anomaly streak at step `now`: raises after too many
        rollbacks, else drops the streak's queued retries. Returns (streak start, dropped)."""
        if self.monitor.counters["rollbacks"] >= self.acfg.max_rollbacks:
            raise TrainingAnomalyError(
                f"{self.acfg.rollback_after} anomalous steps in a row at step {now}, after "
                f"{self.acfg.max_rollbacks} rollbacks already; see "
                f"{os.path.join(self.workdir, 'events.jsonl')}. Lower train.lr, check the data "
                "around these steps, or raise train.anomaly.max_rollbacks."
            )
        streak_start = self.monitor.streak_start
        dropped = self.feeder.drop_from(streak_start)
        self.monitor.counters["dropped_batches"] += dropped
        return streak_start, dropped

    def _rollback(self, mark: Any, now: int) -> int:
        """Back to the newest checkpoint before the anomaly streak (or the initial state) from
        step `now`; the data stream moves on and the streak's batches are dropped. `mark` is
        the feeder position before an already-dispatched step to discard (None at a boundary).
        Returns the new step; the throughput window and the step timer restart."""
        if mark is not None:  # hand back the batch of the discarded, already-dispatched step
            self.feeder.reset(mark)
        streak_start, dropped = self._end_streak(now)
        self.ckpt.wait()
        restored = self.ckpt.restore_latest(
            self.par.abstract_state,
            self.par.state_shardings,
            items=("state",),
            before=streak_start,
        )
        self.state = self._local_view(restored.state) if restored else self._init_state()
        if self.local:
            self._reset_local()
        target = restored.step if restored else 0
        self.monitor.rolled_back()
        # Re-save the target step with the new data position and counters (its old copy goes
        # to checkpoints.discarded/ with the abandoned newer ones), so a crash from here on
        # resumes on this path.
        discarded = self.ckpt.discard_after(target - 1, "rolled_back")
        if self.params_ckpt:
            self.params_ckpt.discard_after(target, "rolled_back")
        self._save(target, force=True)
        self.ckpt.wait()
        self.writer.rewind(target)
        self.writer.event(
            {
                "event": "rollback",
                "step": now,
                "to_step": target,
                "streak_start": streak_start + 1,
                "batches_dropped": dropped,
                "checkpoints_discarded": discarded,
                "rollbacks": self.monitor.counters["rollbacks"],
            }
        )
        self.last_logged, self.iter_start = target, None
        self.window.reset()
        return target

    def _save(self, step: int, *, force: bool = False) -> bool:
        if not force and step in self.ckpt.all_steps():
            return False
        self.ckpt.save(
            step,
            self._global_view(),
            data_iter=self.feeder,
            monitor=self.monitor.state_dict(),
            config=to_dict(self.cfg),
        )
        self.faults.after_save(step)
        return True

    def _log_row(self, step: int, metrics: Any, evaluate: bool) -> dict[str, Any]:
        """Writes the row of `step` (blocks until the step is done) and starts a new window."""
        row = metrics_summary(metrics)
        for k in ("skipped", "nonfinite", "spike"):  # per-step flags: the counters say more
            row.pop(k)
        row.update(self.monitor.counters)
        row.update(self.window.rates(self.tokens_per_step))
        tps = row["tokens_per_sec"]
        row["mfu"] = (
            self.fpt * tps / (self.peak * jax.device_count()) if self.peak and tps else None
        )
        row["slow_steps"] = self.slow.slow_steps
        row.update(self.mixture.metrics())
        if hasattr(self.stream, "metrics"):  # a post-training source's (rollout statistics)
            row.update(self.stream.metrics())
        if evaluate:  # val_loss, capability/..., task/...; its time stays out of the step timer
            t0 = time.perf_counter()
            row.update(self.evaluator(self._global_view(), step))
            self.iter_start = time.perf_counter()
            self.eval_time = self.iter_start - t0
        eta = (self.t.steps - step) * row["step_time"] if row["step_time"] else None
        if eta is not None and self.evaluator is not None:  # the evaluations still to come
            every = self.evaluator.every
            left = (self.t.steps - 1) // every - step // every + (step < self.t.steps)
            eta += max(left, 0) * self.eval_time
        self.writer.write(step, row, eta_seconds=eta)
        self.last_logged = step
        self.window.reset()
        return row

    def _finish_saves(self) -> None:
        for ckpt in (self.ckpt, self.params_ckpt):
            if ckpt:
                ckpt.wait()

    def _time_step(self, step: int, seconds: float, data: float, saved: bool) -> None:
        event = self.slow.observe(step, seconds, data, checkpoint_saved=saved)
        if event:
            self.writer.event(event)

    def close(self) -> None:
        if self.watcher:
            self.watcher.close()
        for ckpt in (self.ckpt, self.params_ckpt):
            if ckpt:
                ckpt.wait()
                ckpt.close()
        if self.writer:
            self.writer.close()
        if self.feeder:
            self.feeder.close()
