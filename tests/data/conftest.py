"""Fixtures: tiny corpora built in temporary directories."""

import pytest

from lingjax.data import ByteTokenizer, write_corpus
from tests.support.corpora import (
    MIXTURE_BASES,
    MIXTURE_LENGTHS,
    TEXTS,
    UNIQUE_VOCAB,
    unique_docs,
)


@pytest.fixture
def text_corpus(tmp_path):
    tok = ByteTokenizer()
    out = tmp_path / "text"
    write_corpus(
        (tok.encode(t) for t in TEXTS),
        out,
        tokenizer=tok.kind,
        tokenizer_hash=tok.sha256,
        vocab_size=tok.vocab_size,
        domain="code",
        docs_per_shard=2,
    )
    return out


@pytest.fixture(scope="module")
def unique_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("unique") / "corpus"
    write_corpus(
        unique_docs(), out, tokenizer="test", vocab_size=UNIQUE_VOCAB, domain="t", docs_per_shard=6
    )
    return str(out)


@pytest.fixture(scope="module")
def mixture_corpora(tmp_path_factory):
    """{name: corpus dir} of the three MIXTURE_* corpora."""
    root = tmp_path_factory.mktemp("mixture")
    out = {}
    for name, base in MIXTURE_BASES.items():
        out[name] = str(root / name)
        write_corpus(
            unique_docs(MIXTURE_LENGTHS[name], base),
            out[name],
            tokenizer="test",
            vocab_size=UNIQUE_VOCAB,
            domain=name,
            docs_per_shard=32,
        )
    return out
