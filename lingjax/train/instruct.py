"""A post-training run's data on the training side: the run's tokenizer and data.instruct's
examples (lingjax/data/instruct.py), loaded and checked before anything is written."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from lingjax.configs import Config, ConfigError
from lingjax.data import MODEL_INPUTS
from lingjax.data.chat import chat_template
from lingjax.data.instruct import InstructData, InstructIterator, instruct_tokenizer, read_instruct


@dataclasses.dataclass
class Instruct:
    """A post-training run's data: its tokenizer, and the examples of data.instruct."""

    tokenizer: Any
    data: InstructData

    def batches(self, t: Any, process_index: int, process_count: int, seed: int) -> Any:
        rows = t.batch_size // process_count
        return InstructIterator(
            self.data,
            seq_len=t.seq_len,
            rows=rows,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
        )


def load_instruct(cfg: Config, workdir: str) -> Instruct:
    """data.instruct tokenized with the run's tokenizer (data.tokenizer, or the one the workdir
    or train.init_from records, else bytes) and chat template; every bad line is refused here,
    before anything is written."""
    tok = instruct_tokenizer(cfg.data.tokenizer, workdir, cfg.train.init_from)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tok.vocab_size} ids but model.vocab_size="
            f"{cfg.model.vocab_size}; use the model's tokenizer (data.tokenizer)"
        )
    template = chat_template(cfg.data.chat_template, tok)
    t = cfg.train
    kind = {"sft": "sft", "dpo": "dpo", "c3po": "prompts"}[t.objective]
    new = t.c3po.max_new_tokens if t.objective == "c3po" else 0
    data = read_instruct(
        cfg.data.instruct, tok, template, seq_len=t.seq_len, kind=kind, max_new_tokens=new
    )
    return Instruct(tok, data)


class PolicyAccess:
    """What post-training's batch sources read from the loop's run (lingjax/posttrain): the
    current weights, the frozen initial ones, and log-probs of a host batch on the run's
    mesh. Mixed into the loop's run object."""

    def policy(self) -> tuple[Any, Any]:
        """(params, buffers) the next step starts from."""
        return self.state.params, self.state.buffers

    def reference(self) -> tuple[Any, Any]:
        """(params, buffers) of the initial weights (train.init_from, or the seed's random
        init), kept frozen in memory from the first call on."""
        if getattr(self, "_reference", None) is None:
            import jax.numpy as jnp

            state = self.state if self.start == 0 and self.steps_run == 0 else self._init_state()
            copy = jax.tree.map(jnp.copy, (state.params, state.buffers))  # steps donate theirs
            self._reference = copy
        return self._reference

    def token_logprobs(self, params: Any, buffers: Any, batch: dict) -> Any:
        """fp32 [R, L] host array: log p(label) under (params, buffers) at each labelled
        position of the host batch `batch` (0 elsewhere)."""
        import numpy as np

        if getattr(self, "_logprob_step", None) is None:
            self._logprob_step = _logprob_step(self.cfg.model, self.par.mesh)
        placed = self.par.put_batch({k: batch[k] for k in MODEL_INPUTS})
        return np.asarray(self._logprob_step(params, buffers, placed))


def _logprob_step(model_cfg: Any, mesh: Any) -> Any:
    from jax.sharding import NamedSharding, PartitionSpec

    from lingjax.model import Transformer, join
    from lingjax.parallel import in_mesh_context
    from lingjax.train.objectives import token_logprobs

    model = Transformer(model_cfg)

    def fn(params, buffers, batch):
        logits, _ = model.apply(
            join(params, buffers), batch["tokens"], batch["segment_ids"], batch["positions"]
        )
        return token_logprobs(logits, batch["labels"])[0]

    out = NamedSharding(mesh, PartitionSpec())
    return in_mesh_context(jax.jit(fn, out_shardings=out), mesh)
