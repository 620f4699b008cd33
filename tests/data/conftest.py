"""Fixtures: tiny corpora built in temporary directories."""

import pytest

from lingjax.data import ByteTokenizer, write_corpus
from tests.data.corpora import TEXTS, UNIQUE_VOCAB, unique_docs


@pytest.fixture
def text_corpus(tmp_path):
    tok = ByteTokenizer()
    out = tmp_path / "text"
    write_corpus(
        (tok.encode(t) for t in TEXTS),
        out,
        tokenizer=tok.name,
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
