"""A post-training run's data on the training side: the run's tokenizer and data.instruct's
examples (lingjax/data/instruct.py), loaded and checked before anything is written."""

from __future__ import annotations

import dataclasses
from typing import Any

from lingjax.configs import Config, ConfigError
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
