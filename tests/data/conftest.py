"""Fixtures: tiny corpora built in temporary directories."""

import numpy as np
import pytest

from lingjax.data import ByteTokenizer, write_corpus
from tests.data.corpora import TEXTS, UNIQUE_VOCAB, lengths_by_id, unique_docs


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


# Three unique-token corpora of different document lengths (so token and document shares
# differ): corpus i holds documents with ids 1000 * (base_i + d + 1) + offset.
MIXTURE_BASES = {"code": 0, "math": 100, "web": 200}
_rng = np.random.default_rng(0)
MIXTURE_LENGTHS = {
    "code": [int(n) for n in _rng.integers(20, 120, 60)],
    "math": [int(n) for n in _rng.integers(1, 12, 90)],
    "web": [int(n) for n in _rng.integers(5, 40, 80)],
}

# {document id: length} over all three (what check_batch needs).
MIXTURE_DOC_LENGTHS = {
    d: n
    for name, base in MIXTURE_BASES.items()
    for d, n in lengths_by_id(MIXTURE_LENGTHS[name], base).items()
}


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
