"""Log-likelihood of (context, continuation) pairs, many pairs packed into each sequence.

Legend: B rows per batch, L sequence length, V vocab, P pairs.

    scorer = Scorer(cfg.model, variables, rows=8, seq_len=512)      # compiles once
    out = scorer([(ctx_ids, cont_ids), ...])
    out.logprob[i]  # sum of log p(continuation tokens | context), nats
    out.tokens[i]   # continuation tokens scored;  out.greedy[i]: every one is the argmax

A pair of n = len(context) + len(continuation) tokens takes n - 1 slots of a row (the last
token is only a label). Pairs are packed first-fit into rows of L slots, each with its own
segment id and positions 0..n-2, so attention never crosses pairs: a packed pair scores as it
would alone (the tests check it against a plain forward of each pair). Every batch is [B, L]
(the last one padded with empty rows), so one compiled function serves every call. A context
longer than fits is cut from the left (the newest L - len(continuation) + 1 tokens stay, as
lm-eval-harness does); a continuation longer than L is refused.

With `mesh`, batches are split over its batch axes (the variables are used where they lie:
place them with `parallel.variable_shardings` first for a sharded model). In a multi-process
job every process calls the scorer with the same pairs (they pack identically), places the
rows its devices hold, and gets every pair's scores back (gathered across processes).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from lingjax import parallel
from lingjax.configs import ModelConfig
from lingjax.evaluate.generation import inference_config
from lingjax.model import Transformer

Pair = tuple[Sequence[int], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per-pair results, in the order the pairs were given."""

    logprob: np.ndarray  # float64 [P]: sum of the continuation's token log-probs (nats)
    tokens: np.ndarray  # int64 [P]: continuation tokens scored
    greedy: np.ndarray  # bool [P]: every continuation token is the model's argmax


@dataclasses.dataclass(frozen=True)
class Packed:
    """One [B, L] batch: model inputs, labels (-1: not scored) and the pair of each slot."""

    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    pair: np.ndarray  # int32 [B, L]: index of the pair a scored slot belongs to, -1 elsewhere


def _fit(index: int, context: Sequence[int], continuation: Sequence[int], seq_len: int):
    """(input tokens, labels) of one pair, the context cut from the left to fit seq_len."""
    ctx, cont = list(context), list(continuation)
    if not ctx:
        raise ValueError(
            f"pair {index}: the context is empty; start it with a BOS/EOS token so the first "
            "continuation token has something to condition on"
        )
    if not cont:
        raise ValueError(f"pair {index}: the continuation is empty: nothing to score")
    if len(cont) > seq_len:
        raise ValueError(
            f"pair {index}: the continuation has {len(cont)} tokens, more than seq_len="
            f"{seq_len}; score with a longer seq_len"
        )
    ids = (ctx + cont)[-(seq_len + 1) :]
    labels = [-1] * (len(ids) - 1 - len(cont)) + cont
    return ids[:-1], labels


def pack(pairs: Sequence[Pair], rows: int, seq_len: int) -> list[Packed]:
    """Pairs packed first-fit in order into rows of seq_len slots, `rows` rows per batch."""
    if rows < 1 or seq_len < 2:
        raise ValueError(f"need rows >= 1 and seq_len >= 2 (got rows={rows}, seq_len={seq_len})")
    shape = (rows, seq_len)
    batches: list[dict[str, np.ndarray]] = []
    row, used, seg = rows, seq_len, 0  # start "full", so the first pair opens a batch

    for i, (ctx, cont) in enumerate(pairs):
        inputs, labels = _fit(i, ctx, cont, seq_len)
        n = len(inputs)
        if used + n > seq_len:  # next row (and a new batch after the last row)
            row, used, seg = row + 1, 0, 0
            if row >= rows:
                batches.append(
                    {
                        "tokens": np.zeros(shape, np.int32),
                        "segment_ids": np.zeros(shape, np.int32),
                        "positions": np.zeros(shape, np.int32),
                        "labels": np.full(shape, -1, np.int32),
                        "pair": np.full(shape, -1, np.int32),
                    }
                )
                row = 0
        b, seg = batches[-1], seg + 1
        s = slice(used, used + n)
        b["tokens"][row, s] = inputs
        b["segment_ids"][row, s] = seg
        b["positions"][row, s] = np.arange(n)
        b["labels"][row, s] = labels
        b["pair"][row, s] = np.where(np.asarray(labels) >= 0, i, -1)
        used += n
    return [Packed(**b) for b in batches]


@functools.lru_cache(maxsize=8)
def _token_scores(model_cfg: ModelConfig):
    """jit((variables, tokens, segment_ids, positions, labels) -> (log p(label), argmax ==
    label)), both [B, L]; the [B, L, V] log-softmax is never materialised."""
    model = Transformer(inference_config(model_cfg))

    def fn(
        variables: Any,
        tokens: Int[Array, "B L"],
        segment_ids: Int[Array, "B L"],
        positions: Int[Array, "B L"],
        labels: Int[Array, "B L"],
    ) -> tuple[Float[Array, "B L"], Array]:
        logits, _ = model.apply(variables, tokens, segment_ids, positions)
        logits = logits.astype(jnp.float32)
        safe = jnp.maximum(labels, 0)[..., None]
        target = jnp.take_along_axis(logits, safe, axis=-1)[..., 0]
        logprob = target - jax.nn.logsumexp(logits, axis=-1)
        return logprob, jnp.argmax(logits, axis=-1) == labels

    return jax.jit(fn)


class Scorer:
    """Scores pairs with one compiled forward per [rows, seq_len] batch (module docstring)."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        variables: dict[str, Any],
        *,
        rows: int = 8,
        seq_len: int = 512,
        mesh: jax.sharding.Mesh | None = None,
    ):
        if seq_len > model_cfg.max_position_embeddings:
            raise ValueError(
                f"seq_len={seq_len} exceeds the model's max_position_embeddings="
                f"{model_cfg.max_position_embeddings}"
            )
        if mesh is not None:
            sizes = parallel.shape_of(mesh)
            shards = sizes["data"] * sizes["fsdp"] * sizes["expert"]
            if rows % shards:
                raise ValueError(
                    f"rows={rows} must be a multiple of the mesh's {shards} batch shards "
                    "(data x fsdp x expert)"
                )
        self.model_cfg, self.variables = model_cfg, variables
        self.rows, self.seq_len, self.mesh = rows, seq_len, mesh
        self._fn = _token_scores(model_cfg)
        if mesh is not None:
            self._fn = parallel.in_mesh_context(self._fn, mesh)

    def _put(self, batch: dict[str, np.ndarray]) -> dict[str, Array]:
        if self.mesh is None:
            return batch
        sharding = parallel.batch_sharding(self.mesh)
        if jax.process_count() == 1:
            return {k: jax.device_put(v, sharding) for k, v in batch.items()}
        # Every process holds the whole batch: each places the rows of its own devices.
        return {
            k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
            for k, v in batch.items()
        }

    def _get(self, out: Any) -> Any:
        if jax.process_count() == 1:
            return jax.device_get(out)
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(out, tiled=True)

    def batches(self, pairs: Sequence[Pair]) -> list[Packed]:
        return pack(pairs, self.rows, self.seq_len)

    def __call__(self, pairs: Sequence[Pair]) -> Scores:
        P = len(pairs)
        logprob, tokens, wrong = np.zeros(P), np.zeros(P, np.int64), np.zeros(P, np.int64)
        for b in self.batches(pairs):
            inputs = {
                "tokens": b.tokens,
                "segment_ids": b.segment_ids,
                "positions": b.positions,
                "labels": b.labels,
            }
            x = self._put(inputs)
            lp, hit = self._get(
                self._fn(self.variables, x["tokens"], x["segment_ids"], x["positions"], x["labels"])
            )
            scored = b.pair >= 0
            idx = b.pair[scored]
            np.add.at(logprob, idx, lp[scored].astype(np.float64))
            np.add.at(tokens, idx, 1)
            np.add.at(wrong, idx, ~hit[scored])
        return Scores(logprob=logprob, tokens=tokens, greedy=wrong == 0)
