"""Data: tokenizers, the corpus builder, tokenised corpora on disk, and the Grain pipelines.

from lingjax import data
corpus_dir = data.default_corpus()       # this Python's stdlib source, built on first use
it = data.make_train_iterator(cfg.data, seq_len=256, batch_size=8, vocab_size=512)
evals = data.make_eval_datasets(cfg.data, seq_len=256, batch_size=8, vocab_size=512)

Building a corpus from text files: `python -m lingjax.cli.build_corpus` (build.py).
"""

from typing import Any

from lingjax.data.corpus import CorpusError, Manifest, ShardInfo, read_manifest, write_corpus
from lingjax.data.default_corpus import default_corpus
from lingjax.data.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    TokenizerError,
    load_tokenizer,
    read_tokenizer_record,
    recorded_tokenizer,
    save_tokenizer,
)


# The pipeline names load on first use: Grain takes ~1.5 s to import, which the corpus builder
# (and its error messages) need not pay.
def __getattr__(name: str) -> Any:
    if name in ("MODEL_INPUTS", "empty_batch", "make_eval_datasets", "make_train_iterator"):
        from lingjax.data import pipeline

        return getattr(pipeline, name)
    if name == "MixtureMeter":
        from lingjax.data.sources import MixtureMeter

        return MixtureMeter
    raise AttributeError(f"module 'lingjax.data' has no attribute {name!r}")


__all__ = [
    "MODEL_INPUTS",
    "ByteTokenizer",
    "CorpusError",
    "HFTokenizer",
    "Manifest",
    "MixtureMeter",
    "ShardInfo",
    "TokenizerError",
    "default_corpus",
    "empty_batch",
    "load_tokenizer",
    "make_eval_datasets",
    "make_train_iterator",
    "read_manifest",
    "read_tokenizer_record",
    "recorded_tokenizer",
    "save_tokenizer",
    "write_corpus",
]
