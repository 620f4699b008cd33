"""Mixtures of corpora: the schedule, realised token proportions, per-source streams, resume,
workers, and the config and corpus checks."""

import json

import numpy as np
import pytest

from lingjax import configs
from lingjax.configs import ConfigError, CorpusSpec, DataConfig
from lingjax.data import CorpusError, MixtureMeter, make_train_iterator, write_corpus
from lingjax.data.sources import MixtureSchedule
from tests.support.corpora import (
    MIXTURE_BASES,
    MIXTURE_DOC_LENGTHS,
    MIXTURE_LENGTHS,
    UNIQUE_VOCAB,
    check_batch,
    documents_in_order,
    rows_of,
    take,
    unique_docs,
)

SEQ, BATCH = 16, 8


def _cfg(corpora, mixture, **kw):
    """`corpora` ({name: dir}) mixed by `mixture` ("name:weight,..."); unnamed ones are left out."""
    weights = dict(entry.split(":") for entry in mixture.split(","))
    specs = tuple(CorpusSpec(n, corpora[n], float(w)) for n, w in weights.items())
    return DataConfig(mixture=specs, **{"prefetch": 0, **kw})


def _iterator(data_cfg, batch=BATCH, **kw):
    return make_train_iterator(
        data_cfg, seq_len=SEQ, batch_size=batch, vocab_size=UNIQUE_VOCAB, **kw
    )


def _corpus_of(doc_id):
    return max((b, n) for n, b in MIXTURE_BASES.items() if doc_id >= b)[1]


@pytest.mark.parametrize(
    "weights", [(0.3, 0.2, 0.5), (0.01, 0.99), (1 / 3, 1 / 3, 1 / 3), (0.05, 0.15, 0.3, 0.5)]
)
def test_schedule_is_within_a_few_rows_of_the_weights_at_every_prefix(weights):
    w = np.array(weights)
    n = 100_000
    for seed in range(3):
        src = MixtureSchedule(weights, seed).sources(0, n)
        counts = np.cumsum(np.eye(len(w), dtype=np.int64)[src], axis=0)  # [n, K]
        deviation = np.abs(counts - np.arange(1, n + 1)[:, None] * w).max()
        # An i.i.d. draw would be ~4 sqrt(n w (1-w)) ~ 180 rows off by the end; this is exact
        # to a few rows at every prefix.
        assert deviation < 6, (seed, deviation)
    a, b = MixtureSchedule(weights, 0), MixtureSchedule(weights, 1)
    np.testing.assert_array_equal(a.sources(777, 50), a.sources(0, 827)[777:])  # random access
    assert not np.array_equal(a.sources(0, 200), b.sources(0, 200)), "seeded"


def test_schedule_never_picks_a_zero_weight_and_is_not_periodic():
    src = MixtureSchedule([0.5, 0.0, 0.5], 0).sources(0, 10_000)
    assert set(src.tolist()) == {0, 2}
    # Not a fixed alternation: runs of equal sources of length 1 and 2 both occur.
    runs = np.diff(np.flatnonzero(np.diff(src) != 0))
    assert {1, 2} <= set(runs.tolist())


def test_realised_token_proportions_match_the_weights(mixture_corpora):
    weights = {"code": 0.3, "math": 0.2, "web": 0.5}
    cfg = _cfg(mixture_corpora, ",".join(f"{n}:{w}" for n, w in weights.items()))
    it = _iterator(cfg)
    meter = MixtureMeter(cfg)
    batches = take(it, 250)  # 2000 rows, 32000 token slots; every corpus cycles several epochs
    for b in batches:
        check_batch(b, BATCH, SEQ, MIXTURE_DOC_LENGTHS)
        meter.update(b)
    rows = rows_of(batches)
    # Count each token's corpus from the token itself, independently of source_ids.
    valid = rows["segment_ids"] > 0
    doc = rows["tokens"] // 1000 - 1
    names = sorted(weights)
    by_source = [names[s] for s in rows["source_ids"]]
    row_corpus = []
    for d, v, t, named in zip(doc, valid, rows["tokens"], by_source, strict=True):
        content = d[v & (t != 1)]
        # A row holding nothing but an epoch's final EOS says no corpus: take source_ids'.
        row_corpus.append(_corpus_of(content[0]) if content.size else named)
    assert by_source == row_corpus, "source_ids name each row's corpus"
    tokens = {n: int(valid[np.array(row_corpus) == n].sum()) for n in names}
    total = sum(tokens.values())
    realised = {n: tokens[n] / total for n in names}
    # Off only by a few schedule rows and the padded last row of each epoch: < 1% here.
    for n in names:
        assert abs(realised[n] - weights[n]) < 0.01, realised
    reported = meter.metrics()
    assert reported.keys() == {f"mixture/{n}" for n in names}
    for n in names:
        assert reported[f"mixture/{n}"] == pytest.approx(realised[n], abs=1e-12)
    assert meter.metrics() == {}, "reset after reading"


def test_each_source_is_its_own_stream_unaffected_by_the_others(mixture_corpora):
    def code_order(mixture, corpora):
        rows = rows_of(take(_iterator(_cfg(corpora, mixture)), 120))
        code = {k: v[rows["source_ids"] == 0] for k, v in rows.items()}  # "code" sorts first
        return documents_in_order(code)  # asserts whole documents, continued across rows

    three = code_order("code:0.3,math:0.2,web:0.5", mixture_corpora)
    two = code_order("code:0.7,web:0.3", {k: mixture_corpora[k] for k in ("code", "web")})
    n = len(MIXTURE_LENGTHS["code"])
    assert len(three) > n and sorted(three[:n]) == list(range(n)), "an epoch: every document once"
    k = min(len(three), len(two))
    assert three[:k] == two[:k], "other corpora and weights do not reorder a corpus"


@pytest.mark.parametrize("prefetch", [0, 2])
def test_mixture_resume_gives_the_same_next_batches(mixture_corpora, prefetch):
    cfg = _cfg(mixture_corpora, "code:0.3,math:0.2,web:0.5", prefetch=prefetch, seed=4)
    it = _iterator(cfg)
    take(it, 53)
    state = json.loads(json.dumps(it.get_state()))
    assert set(state["cursors"]) == {"code", "math", "web"} and state["batch"] == 53
    expected = take(it, 40)
    it.close()
    fresh = _iterator(cfg)
    fresh.set_state(state)
    for x, y in zip(expected, take(fresh, 40), strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    fresh.close()
    other = _iterator(_cfg(mixture_corpora, "code:0.4,math:0.1,web:0.5", seed=4))
    with pytest.raises(ValueError, match="another data stream"):
        other.set_state(state)


def test_mixture_with_grain_workers_matches_in_process_and_resumes(mixture_corpora):
    mixture = "code:0.3,math:0.2,web:0.5"
    reference = take(_iterator(_cfg(mixture_corpora, mixture)), 10)
    cfg = _cfg(mixture_corpora, mixture, num_workers=2)
    it = _iterator(cfg)
    try:
        got = take(it, 6)
        state = it.get_state()
    finally:
        it.close()
    resumed = _iterator(cfg)
    try:
        resumed.set_state(state)
        got += take(resumed, 4)
    finally:
        resumed.close()
    for x, y in zip(reference, got, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_two_processes_share_each_source_disjointly(mixture_corpora):
    cfg = _cfg(mixture_corpora, "code:0.5,math:0.5")
    seen = []
    for p in range(2):
        rows = rows_of(take(_iterator(cfg, batch=2 * BATCH, process_index=p, process_count=2), 60))
        seen.append(
            {
                s: documents_in_order({k: v[rows["source_ids"] == s] for k, v in rows.items()})
                for s in (0, 1)
            }
        )
    for s, name in enumerate(("code", "math")):
        n = len(MIXTURE_LENGTHS[name])
        first = [set(seen[p][s][: n // 2]) for p in range(2)]  # each process' share of epoch 0
        assert not first[0] & first[1], "disjoint"
        base = MIXTURE_BASES[name]
        assert first[0] | first[1] == set(range(base, base + n)), "complete"


def test_zero_weight_corpus_is_not_trained_on(mixture_corpora):
    rows = rows_of(take(_iterator(_cfg(mixture_corpora, "code:1,math:0,web:1")), 40))
    assert set(rows["source_ids"].tolist()) == {0, 2}
    assert not ((rows["tokens"] >= 101_000) & (rows["tokens"] < 201_000)).any()


def test_mixture_config_errors_name_the_key():
    base = configs.get("tiny")
    cases = [
        ({"data.mixture": "code:0.3"}, "expected name=DIR:WEIGHT"),
        ({"data.mixture": "code=/c:-1"}, "weights are finite and >= 0"),
        ({"data.mixture": "co de=/c:1"}, "corpus name 'co de'"),
        ({"data.mixture": "a=/a:1", "data.corpus": "/c"}, "exclusive"),
        ({"data.mixture": "a=/a:1,a=/b:2"}, "names 'a' twice"),
        ({"data.mixture": "a=/a:0"}, "at least one weight"),
        ({"eval.every": 10}, "nothing to evaluate: hold documents out"),
        ({"data.eval_every": 10}, "data.eval_every is now eval.every"),
        ({"data.eval_fraction": 1.0}, r"data.eval_fraction=1.0 must be in \[0, 1\)"),
    ]
    for overrides, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            configs.apply(base, overrides)
    # The CLI form of a mixture parses into the typed config (weight 1 if omitted; a ':' in
    # a path is kept when what follows it is not a weight).
    cfg = configs.apply(base, {"data.mixture": "web=/w:3,code=/c"})
    assert cfg.data.mixture == (CorpusSpec("web", "/w", 3.0), CorpusSpec("code", "/c", 1.0))
    assert cfg.data.mixture_weights() == {"code": 0.25, "web": 0.75}
    assert cfg.data.corpus_dirs() == {"web": "/w", "code": "/c"}
    assert configs.apply(base, {"data.mixture": "g=gs://b/x"}).data.mixture[0].path == "gs://b/x"
    # A notebook passes the typed value itself, and config.json round-trips it.
    typed = configs.get("tiny", **{"data.mixture": (CorpusSpec("a", "/a", 2.0),)})
    assert configs.from_dict(json.loads(configs.to_json(typed))) == typed


def test_an_old_config_json_mixture_reads_as_the_typed_one():
    old = json.loads(configs.to_json(configs.get("tiny")))
    old["data"].pop("mixture")
    old["data"]["corpora"] = "web=/w,code=/c"  # the string form of lingjax before 2026-12
    old["data"]["mixture"] = "web:3,code:1"
    cfg = configs.from_dict(old)
    assert cfg.data.mixture == (CorpusSpec("web", "/w", 3.0), CorpusSpec("code", "/c", 1.0))


def test_corpora_of_another_tokenizer_are_refused(mixture_corpora, tmp_path):
    other = tmp_path / "other"
    write_corpus(
        unique_docs([5, 6], 500),
        other,
        tokenizer="hf",
        tokenizer_hash="ab" * 32,
        vocab_size=UNIQUE_VOCAB,
        domain="x",
    )
    corpora = {"code": mixture_corpora["code"], "other": str(other)}
    with pytest.raises(CorpusError, match=r"other=.* was built with tokenizer hf .*one tokenizer"):
        _iterator(_cfg(corpora, "code:1,other:1"))
    with pytest.raises(CorpusError, match=r"data.tokenizer=byte .*rebuild the corpus"):
        _iterator(DataConfig(corpus=str(other), tokenizer="byte", prefetch=0))
    with pytest.raises(CorpusError, match="vocab_size"):
        make_train_iterator(
            _cfg(mixture_corpora, "code:1,web:1"), seq_len=SEQ, batch_size=BATCH, vocab_size=300
        )
