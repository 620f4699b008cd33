"""DPO's reference: the log-probability the initial (reference) model gives each preference
pair's chosen and rejected answer, computed once before training and cached in the workdir.

Why cached rather than a frozen copy of the model in every step: the reference never changes,
so its log-probs are a property of the data; a pass over the pairs costs one forward each,
once, where a frozen copy would hold a second model's weights in device memory and add a
forward to every step for the whole run. The cache (dpo_reference.npz, written by process 0)
records what it was computed from (the data's fingerprint and where the initial weights came
from); a resume reads it, and a cache of other data or weights is recomputed.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lingjax.data.instruct import InstructData, InstructIterator
from lingjax.model import Transformer, join
from lingjax.parallel import in_mesh_context
from lingjax.train.objectives import pair_logprobs, token_logprobs
from lingjax.train.step import device_inputs

REFERENCE_FILE = "dpo_reference.npz"


def _pair_step(model_cfg: Any, mesh: Any) -> Any:
    """(params, buffers, batch) -> (pair log-probs [P, 2], pair_index [P]), replicated."""
    model = Transformer(model_cfg)

    def fn(params, buffers, batch):
        logits, _ = model.apply(
            join(params, buffers), batch["tokens"], batch["segment_ids"], batch["positions"]
        )
        tok_logp, _ = token_logprobs(logits, batch["labels"])
        logps, _ = pair_logprobs(tok_logp, batch)
        return logps, batch["pair_index"]

    replicated = NamedSharding(mesh, PartitionSpec())
    return in_mesh_context(jax.jit(fn, out_shardings=(replicated, replicated)), mesh)


def reference_logprobs(
    data: InstructData,
    par: Any,
    params: Any,
    buffers: Any,
    *,
    model_cfg: Any,
    seq_len: int,
    batch_size: int,
    source: str,
    workdir: str,
) -> np.ndarray:
    """fp32 [pairs, 2]: the reference's summed answer log-probs of every pair of `data`, from
    the cache in `workdir` if it was computed from the same data and weights (`source` names
    them: the init_from checkpoint, or the seed of a random init), else computed with
    `params`/`buffers` on the run's mesh (`par`: its ShardedTraining) and cached."""
    key = f"{data.fingerprint()}|{source}"
    path = os.path.join(workdir, REFERENCE_FILE)
    if os.path.exists(path):
        with np.load(path) as f:
            if str(f["key"]) == key:
                return f["logps"]
    rows = batch_size // par.data_count
    # Every process makes the same number of batches (a program of all of them): its share's
    # batches, then empty ones. Packing is host-only and deterministic, so each process counts
    # every share's batches itself.
    shares = [
        list(
            InstructIterator(
                data,
                seq_len=seq_len,
                rows=rows,
                shuffle=False,
                epochs=1,
                process_index=p,
                process_count=par.data_count,
            )
        )
        for p in range(par.data_count)
    ]
    mine = shares[par.data_index]
    count = max(len(s) for s in shares)
    step = _pair_step(model_cfg, par.mesh)
    out = np.full((len(data), 2), np.nan, np.float32)
    empty = {k: v.copy() for k, v in mine[0].items()}
    empty["labels"][:] = -1
    empty["pair"][:] = -1
    empty["pair_index"][:] = -1
    for i in range(count):
        host = mine[i] if i < len(mine) else empty
        logps, index = step(params, buffers, par.put_batch(device_inputs(host)))
        logps, index = np.asarray(logps), np.asarray(index)
        ok = index >= 0
        out[index[ok]] = logps[ok]
    if np.isnan(out).any():  # every pair sits in some process's share
        raise RuntimeError(f"{int(np.isnan(out).any(1).sum())} pairs got no reference log-prob")
    if jax.process_index() == 0:
        tmp = f"{path}.tmp-{os.getpid()}.npz"
        np.savez(tmp, key=np.asarray(key), logps=out)
        os.replace(tmp, path)
    return out
