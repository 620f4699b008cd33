"""In-loop evaluation (cfg.eval, lingjax.configs.EvalConfig): held-out loss, capability
corpora, task files and their MaP merges.

    evaluator = Evaluator(cfg, put_batch, inputs=check_inputs(cfg, sources))  # if eval.every
    if evaluator.due(step, last=step == cfg.train.steps):
        row.update(evaluator(state, step))   # {"val_loss": ..., "capability/math": ..., ...}

- val_loss[/<corpus>]: each training corpus' held-out documents (data.eval_fraction) are
  packed like training batches (same shapes, so the same compiled function serves every call)
  and the first eval.batches batches are scored, the same tokens every time, so val_loss is
  comparable along the run. Only the main CE counts (no router or MTP terms). With a mixture,
  `val_loss/<name>` is each corpus' loss and `val_loss` their mixture-weighted mean (the loss on
  held-out data of the training distribution); a weight-0 corpus gets its own val_loss/<name>
  but does not enter val_loss.
- capability/<name>: the same loss on the first eval.batches batches of each eval.capability
  corpus (all its documents: these corpora are not trained on), SuperValid-style.
- task/<name>/<metric>: eval.tasks scored by lingjax.evaluate (as lingjax.cli.eval does), with
  the run's tokenizer, eval.task_seq_len tokens per row and train.batch_size rows.
- MaP (eval.merge_last = K): the same metrics of the uniform mean of this step's weights and
  the newest K-1 checkpoints saved before it (params copies preferred), with a `_merged`
  suffix (val_loss_merged, capability/math_merged, task/copy/exact_merged) and
  `merged_checkpoints` (how many were averaged: fewer early in a run). The checkpoints are read
  straight into the training layout, one at a time, and summed in float32 on the devices: the
  devices hold two extra copies of the weights for the duration, never K.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from lingjax.checkpoint.manager import first_line
from lingjax.checkpoint.run import CHECKPOINT_DIR, PARAMS_CHECKPOINT_DIR, restore_variables
from lingjax.configs import Config, ConfigError, ModelConfig
from lingjax.data import MODEL_INPUTS, empty_batch, make_eval_datasets
from lingjax.data.sources import open_sources, run_tokenizer
from lingjax.evaluate.scoring import Scorer
from lingjax.evaluate.tasks import Task, TaskFileError, evaluate_tasks, load_tasks
from lingjax.merge import run_steps
from lingjax.model import Transformer, join
from lingjax.train.losses import cross_entropy


@functools.lru_cache(maxsize=4)
def cross_entropy_step(model_cfg: ModelConfig) -> Callable[..., tuple[Array, Array]]:
    """jit((params, buffers, batch) -> (sum of token CE, number of target tokens))."""
    model = Transformer(model_cfg)

    def step(params: Any, buffers: Any, batch: dict[str, Array]) -> tuple[Array, Array]:
        logits, _ = model.apply(
            join(params, buffers),
            batch["tokens"],
            batch["segment_ids"],
            batch["positions"],
            rngs={"routing": jax.random.key(0)},  # unused without routing warmup noise
        )
        return cross_entropy(logits, batch["labels"])

    return jax.jit(step)


@dataclasses.dataclass(frozen=True)
class EvalInputs:
    """What in-loop evaluation reads besides the state, checked before the workdir is written."""

    tasks: tuple[Task, ...] = ()
    tokenizer: Any = None  # the run's, for task text (None without tasks)


def check_inputs(cfg: Config, sources: Sequence[Any], tokenizer: Any = None) -> EvalInputs:
    """EvalInputs of cfg.eval; CorpusError / ConfigError / TokenizerError (each naming the
    key and the fix) for a capability corpus or task file that cannot be read. `tokenizer`:
    the run's, when it trains on no corpora (post-training); else the corpora's."""
    e = cfg.eval
    if not e.every:
        return EvalInputs()
    if e.capability:  # opens and checks the manifests (vocab, tokenizer); reads no tokens
        open_sources(cfg.data, vocab_size=cfg.model.vocab_size, split="all", corpora=e.capability)
    if not e.tasks:
        return EvalInputs()
    try:
        tasks = load_tasks(e.tasks, e.synthetic_examples)
    except TaskFileError as err:
        raise ConfigError(f"eval.tasks: {err}") from None
    if jax.process_count() > 1 and (gen := [t.name for t in tasks if t.kind == "generative"]):
        raise ConfigError(
            f"eval.tasks: generative tasks ({', '.join(gen)}) are evaluated in the loop of "
            "one-process runs only; score them after training with lingjax.cli.eval"
        )
    return EvalInputs(tuple(tasks), tokenizer or run_tokenizer(cfg.data, sources))


class Evaluator:
    """cfg.eval's metrics every eval.every steps and at the last step (module docstring)."""

    def __init__(
        self,
        cfg: Config,
        put_batch: Callable[[dict[str, np.ndarray]], dict[str, Array]],
        *,
        inputs: EvalInputs | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        eval_step: Callable[..., tuple[Array, Array]] | None = None,
        mesh: jax.sharding.Mesh | None = None,
        workdir: str | None = None,
        shardings: Any = None,
        before_merge: Callable[[], None] = lambda: None,
    ):
        """`eval_step(params, buffers, batch) -> (sum of token losses, target tokens)`; by
        default the model's next-token cross-entropy, jitted (and shared across Evaluators).
        MaP (eval.merge_last) reads the checkpoints of `workdir` into `shardings` (a tree of
        {"params", "buffers"}), after `before_merge()` (which finishes pending saves)."""
        t, d, e = cfg.train, cfg.data, cfg.eval
        process_count = jax.process_count() if process_count is None else process_count
        process_index = jax.process_index() if process_index is None else process_index
        self.cfg, self.every, self.num_batches = cfg, e.every, e.batches
        self.rows, self.seq_len = t.batch_size // process_count, t.seq_len
        datasets = functools.partial(
            make_eval_datasets,
            d,
            seq_len=t.seq_len,
            batch_size=t.batch_size,
            vocab_size=cfg.model.vocab_size,
            process_index=process_index,
            process_count=process_count,
        )
        self.datasets = datasets() if d.eval_fraction > 0 else []
        self.capability = datasets(corpora=e.capability) if e.capability else []
        self.inputs = inputs or EvalInputs()
        if e.tasks and not self.inputs.tasks:
            raise ValueError("eval.tasks is set: pass inputs=check_inputs(cfg, sources)")
        self._step = eval_step or cross_entropy_step(cfg.model)
        self._put = put_batch
        self.mesh, self.workdir, self.shardings = mesh, workdir, shardings
        self.before_merge = before_merge
        if e.merge_last and workdir is None:
            raise ValueError("eval.merge_last reads the run's checkpoints: pass workdir")

    def due(self, step: int, last: bool) -> bool:
        """Whether to evaluate after `step` steps (`last`: the run's final step)."""
        return step > 0 and (step % self.every == 0 or last)

    def __call__(self, state: Any, step: int | None = None) -> dict[str, float]:
        """Metrics of `state` (a TrainState: params, buffers) at `step` (module docstring);
        `step` is needed for MaP only (the checkpoints before it are merged)."""
        out = self.measure(state.params, state.buffers)
        if self.cfg.eval.merge_last:
            if step is None:
                raise ValueError("eval.merge_last needs the step being evaluated")
            merged = self._merged(state, step)
            if merged is not None:
                count, params, buffers = merged
                scores = self.measure(params, buffers)
                scores.pop("val_tokens", None)
                out.update({f"{k}_merged": v for k, v in scores.items()})
                out["merged_checkpoints"] = float(count)
        return out

    def measure(self, params: Any, buffers: Any) -> dict[str, float]:
        """val_loss[/<name>] and val_tokens (held-out split), capability/<name>, task/..."""
        out: dict[str, float] = {}
        if self.datasets:
            out.update(self._held_out(params, buffers))
        for name, _, dataset in self.capability:
            loss_sum, count = (
                float(x) for x in jax.device_get(self._loss(params, buffers, dataset))
            )
            out[f"capability/{name}"] = loss_sum / count if count else math.nan
        if self.inputs.tasks:
            e = self.cfg.eval
            scorer = Scorer(
                self.cfg.model,
                {"params": params, "buffers": buffers},
                rows=self.cfg.train.batch_size,
                seq_len=e.task_seq_len,
                mesh=self.mesh,
            )
            scores = evaluate_tasks(self.inputs.tasks, scorer, self.inputs.tokenizer, e.task_mode)
            out.update({k: v for k, v in scores.items() if not k.endswith("/examples")})
        return out

    def _loss(self, params: Any, buffers: Any, dataset: Any) -> tuple[Array, Array]:
        """(sum of token losses, target tokens) over the first eval.batches batches."""
        it = iter(dataset)
        total = None
        for _ in range(self.num_batches):
            # Every process runs the same number of steps: a split that ends early is padded
            # with empty batches (no targets) rather than cut short.
            batch = next(it, None) or empty_batch(self.rows, self.seq_len)
            part = self._step(params, buffers, self._put({k: batch[k] for k in MODEL_INPUTS}))
            total = part if total is None else jax.tree.map(lambda a, b: a + b, total, part)
        return total

    def _held_out(self, params: Any, buffers: Any) -> dict[str, float]:
        host = jax.device_get({n: self._loss(params, buffers, ds) for n, _, ds in self.datasets})
        out: dict[str, float] = {}
        weighted, weight = 0.0, 0.0
        for name, w, _ in self.datasets:
            loss_sum, count = (float(x) for x in host[name])
            loss = loss_sum / count if count else math.nan
            if len(self.datasets) > 1:
                out[f"val_loss/{name}"] = loss
            if w > 0 and count:
                weighted, weight = weighted + w * loss, weight + w
        out["val_loss"] = weighted / weight if weight else math.nan
        out["val_tokens"] = float(sum(float(host[name][1]) for name in host))
        return out

    def _merged(self, state: Any, step: int) -> tuple[int, Any, Any] | None:
        """(count, params, buffers) of the mean of `state` and the newest eval.merge_last - 1
        readable checkpoints before `step`; None if there is none yet."""
        self.before_merge()
        kinds = {s: k for s, k in run_steps(self.workdir).items() if s < step}
        acc = jax.tree.map(lambda x: x.astype(jnp.float32), (state.params, state.buffers))
        count = 1
        for s in sorted(kinds, reverse=True):
            if count == self.cfg.eval.merge_last:
                break
            sub = PARAMS_CHECKPOINT_DIR if kinds[s] == "params" else CHECKPOINT_DIR
            try:
                v = restore_variables(
                    os.path.join(self.workdir, sub), s, self.cfg.model, self.shardings
                )
            except Exception as err:  # orbax/tensorstore raise many types; merge what reads
                print(f"MaP: checkpoint {s} skipped ({first_line(err)})")
                continue
            acc = _add(acc, (v["params"], v.get("buffers", {})))
            count += 1
        if count == 1:
            return None
        params, buffers = _mean(acc, (state.params, state.buffers), count)
        return count, params, buffers


@jax.jit
def _add(acc: Any, tree: Any) -> Any:
    return jax.tree.map(lambda a, x: a + x.astype(jnp.float32), acc, tree)


@functools.partial(jax.jit, static_argnums=2)
def _mean(acc: Any, like: Any, count: int) -> Any:
    return jax.tree.map(lambda a, x: (a / count).astype(x.dtype), acc, like)
