"""The held-out validation split: never in training, fixed, nested, shared by processes."""

import numpy as np
import pytest

from lingjax.configs import CorpusSpec, DataConfig
from lingjax.data import CorpusError, empty_batch, make_eval_datasets, make_train_iterator
from lingjax.data.sources import split_documents
from tests.support.corpora import (
    MIXTURE_BASES,
    MIXTURE_DOC_LENGTHS,
    MIXTURE_LENGTHS,
    UNIQUE_LENGTHS,
    UNIQUE_VOCAB,
    check_batch,
    documents_in_order,
    rows_of,
    take,
)

SEQ, BATCH = 16, 4


def _datasets(data_cfg, **kw):
    return make_eval_datasets(
        data_cfg, seq_len=SEQ, batch_size=BATCH, vocab_size=UNIQUE_VOCAB, **kw
    )


def _eval_docs(dataset, lengths=None):
    batches = list(dataset)
    for b in batches:
        check_batch(b, len(b["tokens"]), SEQ, lengths)
    return documents_in_order(rows_of(batches), whole=True)


def test_split_is_fixed_nested_and_independent_of_the_seed():
    train, held = split_documents(1000, 0.05, "c")
    assert len(held) == 50 and len(train) == 950
    assert not set(train) & set(held) and set(train) | set(held) == set(range(1000))
    _, held_more = split_documents(1000, 0.1, "c")
    assert set(held) < set(held_more), "a larger fraction holds out a superset"
    np.testing.assert_array_equal(held, split_documents(1000, 0.05, "c")[1])
    assert len(split_documents(10, 0.01, "c")[1]) == 1, "a positive fraction holds out >= 1"
    with pytest.raises(CorpusError, match="holds out all 3 documents of c"):
        split_documents(3, 0.9, "c")


def test_held_out_documents_never_reach_training(unique_corpus):
    n = len(UNIQUE_LENGTHS)
    held = set()
    for seed in (0, 1):
        cfg = DataConfig(corpus=unique_corpus, eval_fraction=0.25, seed=seed, prefetch=0)
        ((name, weight, ds),) = _datasets(cfg)
        assert (name, weight) == ("t", 1.0)
        docs = _eval_docs(ds)
        assert docs == sorted(docs) and len(docs) == 5, "each held-out document once, in order"
        assert not held or set(docs) == held, "data.seed does not move the split"
        held = set(docs)
        assert _eval_docs(ds) == docs, "the same batches every time"
        it = make_train_iterator(cfg, seq_len=SEQ, batch_size=BATCH, vocab_size=UNIQUE_VOCAB)
        trained = documents_in_order(rows_of(take(it, 40)))  # several epochs
        assert len(trained) > 3 * (n - 5)
        assert set(trained) == set(range(n)) - held, "training sees exactly the rest"


def test_each_corpus_of_a_mixture_holds_out_its_own(mixture_corpora):
    weights = {"code": 0.5, "math": 0.0, "web": 0.5}
    mixture = tuple(CorpusSpec(n, mixture_corpora[n], w) for n, w in weights.items())
    cfg = DataConfig(mixture=mixture, eval_fraction=0.1)
    sets = _datasets(cfg)
    assert [(n, w) for n, w, _ in sets] == [("code", 0.5), ("math", 0.0), ("web", 0.5)]
    for name, _, ds in sets:
        base, count = MIXTURE_BASES[name], len(MIXTURE_LENGTHS[name])
        docs = _eval_docs(ds, MIXTURE_DOC_LENGTHS)
        assert len(docs) == round(0.1 * count) and all(base <= d < base + count for d in docs)


def test_two_processes_split_the_held_out_documents(unique_corpus):
    cfg = DataConfig(corpus=unique_corpus, eval_fraction=0.3)
    shares = [_eval_docs(_datasets(cfg, process_index=p, process_count=2)[0][2]) for p in range(2)]
    ((_, _, whole),) = _datasets(cfg)
    assert not set(shares[0]) & set(shares[1]), "disjoint"
    assert sorted(shares[0] + shares[1]) == _eval_docs(whole), "complete"


def test_no_split_and_empty_batches(unique_corpus):
    with pytest.raises(CorpusError, match=r"set data.eval_fraction"):
        _datasets(DataConfig(corpus=unique_corpus))
    with pytest.raises(CorpusError, match="fewer than the 8 processes"):
        cfg = DataConfig(corpus=unique_corpus, eval_fraction=0.1)
        make_eval_datasets(cfg, seq_len=SEQ, batch_size=8, vocab_size=UNIQUE_VOCAB, process_count=8)
    empty = empty_batch(3, SEQ)
    assert (empty["segment_ids"] == 0).all() and (empty["labels"] == -1).all()
    assert empty["tokens"].shape == (3, SEQ) and empty["source_ids"].shape == (3,)
