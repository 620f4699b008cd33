"""make_train_iterator on one corpus: packing invariants, attention masks, epochs, determinism,
resume, process sharding (Grain workers: test_mixture.py)."""

import json

import numpy as np
import pytest

from lingjax.configs import DataConfig
from lingjax.data import CorpusError, make_train_iterator, write_corpus
from lingjax.data.documents import permutation
from tests.support.corpora import (
    EOS,
    UNIQUE_LENGTHS,
    UNIQUE_VOCAB,
    check_batch,
    doc_and_offset,
    documents_in_order,
    rows_of,
    take,
    unique_docs,
)

SEQ, BATCH = 16, 4
EPOCH_TOKENS = sum(UNIQUE_LENGTHS) + len(UNIQUE_LENGTHS)  # EOS included
EPOCH_ROWS = -(-EPOCH_TOKENS // SEQ)


def _iterator(corpus, *, seed=0, batch=BATCH, process_index=0, process_count=1, **cfg):
    cfg = {"prefetch": 0, **cfg}
    return make_train_iterator(
        DataConfig(corpus=corpus, seed=seed, **cfg),
        seq_len=SEQ,
        batch_size=batch,
        vocab_size=UNIQUE_VOCAB,
        process_index=process_index,
        process_count=process_count,
    )


def _epoch_rows(it, epoch, rows_per_epoch=EPOCH_ROWS, batch=BATCH):
    """Rows [epoch * rows_per_epoch, (epoch + 1) * rows_per_epoch) of a fresh iterator."""
    need = (epoch + 1) * rows_per_epoch
    rows = rows_of(take(it, -(-need // batch)))
    return {k: v[epoch * rows_per_epoch : need] for k, v in rows.items()}


def test_batches_are_well_formed_and_an_epoch_has_every_token(unique_corpus):
    it = _iterator(unique_corpus)
    batches = take(it, 3 * EPOCH_ROWS // BATCH + 1)
    for b in batches:
        check_batch(b, BATCH, SEQ)
        np.testing.assert_array_equal(b["source_ids"], 0)
    rows = rows_of(batches)
    epoch0 = {k: v[:EPOCH_ROWS] for k, v in rows.items()}
    # Every token of every document exactly once (order-insensitive multiset check) ...
    tokens = epoch0["tokens"][epoch0["segment_ids"] > 0]
    expected = np.concatenate([np.append(d, EOS) for d in unique_docs()])
    np.testing.assert_array_equal(np.sort(tokens), np.sort(expected))
    # ... as whole documents laid end to end, each once; only the epoch's last row is padded.
    assert sorted(documents_in_order(epoch0)) == list(range(len(UNIQUE_LENGTHS)))
    padding = (epoch0["segment_ids"] == 0).sum(axis=1)
    assert (padding[:-1] == 0).all() and padding[-1] == EPOCH_ROWS * SEQ - EPOCH_TOKENS
    # The next epoch starts at the next row, with a fresh document.
    assert rows["positions"][EPOCH_ROWS, 0] == 0
    assert doc_and_offset(rows["tokens"][EPOCH_ROWS, 0])[1] == 0
    it.close()


def test_packed_attention_never_crosses_documents(unique_corpus):
    rows = rows_of(take(_iterator(unique_corpus, seed=3), 12))
    tok, seg = rows["tokens"], rows["segment_ids"]
    # The document of every input: EOS belongs to the document it ends.
    doc = np.where(tok == EOS, -1, tok // 1000 - 1)
    for t in range(1, SEQ):
        doc[:, t] = np.where(
            (doc[:, t] == -1) & (seg[:, t] == seg[:, t - 1]), doc[:, t - 1], doc[:, t]
        )
    R = len(tok)
    doc = np.where(doc == -1, -2 - np.arange(R * SEQ).reshape(R, SEQ), doc)  # a lone EOS
    causal = np.tril(np.ones((SEQ, SEQ), bool))
    mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0) & causal  # [R, L, L]
    same_doc = (doc[:, :, None] == doc[:, None, :]) & (seg[:, :, None] > 0) & causal
    assert mask.sum() > R * SEQ and (~same_doc & causal).any(), "not vacuous: rows mix documents"
    np.testing.assert_array_equal(mask, same_doc)  # never across documents, never too little


def test_seeded_determinism_and_a_new_order_each_epoch(unique_corpus):
    a, b, c = (_iterator(unique_corpus, seed=s) for s in (0, 0, 1))
    rows_a = rows_of(take(a, 2 * EPOCH_ROWS // BATCH + 1))
    rows_b = rows_of(take(b, 2 * EPOCH_ROWS // BATCH + 1))
    for key in rows_a:
        np.testing.assert_array_equal(rows_a[key], rows_b[key])
    epoch0 = {k: v[:EPOCH_ROWS] for k, v in rows_a.items()}
    epoch1 = {k: v[EPOCH_ROWS : 2 * EPOCH_ROWS] for k, v in rows_a.items()}
    order0, order1 = documents_in_order(epoch0), documents_in_order(epoch1)
    assert order1 != order0, "each epoch reshuffles"
    assert documents_in_order(_epoch_rows(c, 0)) != order0, "the seed changes the order"
    assert sorted(order1) == sorted(order0) == list(range(len(UNIQUE_LENGTHS)))


def test_permutation_is_stable_and_seeded():
    p = permutation(1000, seed=3, epoch=0)
    assert sorted(p.tolist()) == list(range(1000))
    np.testing.assert_array_equal(p, permutation(1000, seed=3, epoch=0))
    assert not np.array_equal(p, permutation(1000, seed=3, epoch=1))
    assert not np.array_equal(p, permutation(1000, seed=4, epoch=0))
    # Pinned values: the order must not change across numpy versions (resumed runs rely on it).
    assert permutation(10, seed=7, epoch=3).tolist() == [2, 9, 1, 7, 6, 3, 8, 4, 0, 5]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_gives_the_same_next_batches(unique_corpus, prefetch):
    it = _iterator(unique_corpus, prefetch=prefetch)
    take(it, 37)  # several epochs in (an epoch is 6.5 batches)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
    assert len(json.dumps(state)) < 1000, "a small state"
    expected = take(it, 30)
    it.close()
    fresh = _iterator(unique_corpus, prefetch=prefetch)
    first = next(fresh)  # a used iterator is repositioned too
    fresh.set_state(state)
    got = take(fresh, 30)
    fresh.close()
    assert not np.array_equal(first["tokens"], expected[0]["tokens"])
    for x, y in zip(expected, got, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_state_from_another_stream_is_refused(unique_corpus):
    state = _iterator(unique_corpus).get_state()
    for other in (_iterator(unique_corpus, seed=5), _iterator(unique_corpus, eval_fraction=0.1)):
        with pytest.raises(ValueError, match="another data stream"):
            other.set_state(state)


def test_two_processes_are_disjoint_and_complete(unique_corpus):
    orders = []
    for p in range(2):
        it = _iterator(unique_corpus, batch=2 * BATCH, process_index=p, process_count=2)
        batches = take(it, 12)
        for b in batches:
            check_batch(b, BATCH, SEQ)
        orders.append(documents_in_order(rows_of(batches)))
    n = len(UNIQUE_LENGTHS)
    for epoch in range(2):  # each process has n/2 documents per epoch, dealt alternately
        shares = [set(order[epoch * n // 2 : (epoch + 1) * n // 2]) for order in orders]
        assert len(shares[0]) == len(shares[1]) == n // 2
        assert not shares[0] & shares[1], "disjoint"
        assert shares[0] | shares[1] == set(range(n)), "complete"
    assert orders[0][: n // 2] != orders[0][n // 2 : n], "a new split each epoch"


def test_run_checks(unique_corpus, tmp_path):
    msg = rf"{unique_corpus} .*vocab_size {UNIQUE_VOCAB}\) but the model has vocab_size 512"
    with pytest.raises(CorpusError, match=msg):
        make_train_iterator(
            DataConfig(corpus=unique_corpus), seq_len=8, batch_size=2, vocab_size=512
        )
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        _iterator(unique_corpus, batch=3, process_count=2)
    with pytest.raises(CorpusError, match="does not exist"):
        _iterator(str(tmp_path / "missing"))
    with pytest.raises(CorpusError, match="fewer than the 32 processes"):
        _iterator(unique_corpus, batch=32, process_count=32)


def test_a_token_id_past_the_manifest_vocab_is_caught_when_read(tmp_path):
    # A damaged corpus: its manifest claims a smaller vocab than its records use. The run's
    # vocab check passes on the manifest, so the reader must catch the id itself.
    out = tmp_path / "c"
    write_corpus([np.array([5, 299, 7])], out, tokenizer="t", vocab_size=300, domain="d")
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "vocab_size": 200}))
    with pytest.raises(CorpusError, match=r"token id 299 >= the manifest's vocab_size 200"):
        next(_iterator(str(out), batch=1))
