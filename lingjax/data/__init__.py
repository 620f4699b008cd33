"""Data: the byte tokenizer, tokenised corpora on disk, and the Grain training pipeline.

from lingjax import data
corpus_dir = data.default_corpus()       # this Python's stdlib source, built on first use
it = data.make_train_iterator(cfg.data, seq_len=256, batch_size=8, vocab_size=512)
"""

from lingjax.data.corpus import (
    CorpusError,
    Manifest,
    ShardInfo,
    default_corpus,
    read_manifest,
    write_corpus,
)
from lingjax.data.pipeline import make_train_iterator
from lingjax.data.tokenizer import ByteTokenizer

__all__ = [
    "ByteTokenizer",
    "CorpusError",
    "Manifest",
    "ShardInfo",
    "default_corpus",
    "make_train_iterator",
    "read_manifest",
    "write_corpus",
]
