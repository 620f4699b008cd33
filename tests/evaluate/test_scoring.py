"""Pair scoring: every packed pair's log-likelihood equals a plain forward of that pair alone
(to fp32 tolerance), greedy flags equal the forward's argmax, contexts too long are cut from the
left, a mesh gives the same scores, and bad pairs are refused by index."""

import jax
import numpy as np
import pytest

from lingjax import configs, parallel
from lingjax.evaluate.generation import inference_config
from lingjax.evaluate.scoring import Scorer, pack
from lingjax.model import Transformer, abstract_variables, init_variables

SEQ = 48


@pytest.fixture(scope="module")
def model():
    cfg = configs.get("tiny-v2", **{"model.num_layers": 2}).model
    return cfg, init_variables(cfg, jax.random.key(3))


def _pairs(vocab: int, n: int = 13, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ctx_len = int(rng.integers(1, 20)) if i != 5 else 70  # pair 5 must be cut
        cont_len = int(rng.integers(1, 8))
        out.append(
            (
                rng.integers(3, vocab, ctx_len).tolist(),
                rng.integers(3, vocab, cont_len).tolist(),
            )
        )
    return out


def _logits(cfg, variables, seqs) -> np.ndarray:
    """float64 logits of a plain forward, each sequence alone in its own right-padded row of
    SEQ tokens (pads are segment 0)."""
    tokens = np.zeros((len(seqs), SEQ), np.int32)
    segments = np.zeros((len(seqs), SEQ), np.int32)
    for r, ids in enumerate(seqs):
        tokens[r, : len(ids)], segments[r, : len(ids)] = ids, 1
    logits, _ = jax.jit(Transformer(inference_config(cfg)).apply)(variables, tokens, segments)
    return np.asarray(logits, np.float64)


def _alone(cfg, variables, pairs):
    """[(sum log p(cont | ctx), greedy)] of each (cut) pair from `_logits`, in numpy."""
    cut = [(c + x)[-(SEQ + 1) :] for c, x in pairs]
    logp = np.asarray(jax.nn.log_softmax(_logits(cfg, variables, [i[:-1] for i in cut]), -1))
    out = []
    for r, (ids, (_, cont)) in enumerate(zip(cut, pairs, strict=True)):
        rows = np.arange(len(ids) - 1 - len(cont), len(ids) - 1)
        lp = logp[r, rows, np.asarray(cont)]
        out.append((lp.sum(), bool((logp[r, rows].argmax(-1) == np.asarray(cont)).all())))
    return out


def test_packed_pairs_score_as_they_would_alone(model):
    cfg, variables = model
    pairs = _pairs(cfg.vocab_size)
    # Plant a greedy continuation (the forward's argmax after the context) so the flag is
    # tested both ways.
    ctxs = [c[-SEQ:] for c, _ in pairs]
    logits = _logits(cfg, variables, ctxs)
    pairs[2] = (pairs[2][0], [int(np.argmax(logits[2, len(ctxs[2]) - 1]))])
    batches = pack(pairs, rows=2, seq_len=SEQ)
    assert len(batches) >= 2  # several batches, several pairs per row
    assert max(len(set(b.segment_ids[0]) - {0}) for b in batches) > 1
    got = Scorer(cfg, variables, rows=2, seq_len=SEQ)(pairs)
    want = _alone(cfg, variables, pairs)
    np.testing.assert_allclose(got.logprob, [w[0] for w in want], rtol=2e-5, atol=2e-5)
    assert got.greedy.tolist() == [w[1] for w in want]
    assert got.greedy[2]
    assert got.tokens.tolist() == [len(x) for _, x in pairs]


def test_a_mesh_scores_the_same(model):
    cfg, variables = model
    pairs = _pairs(cfg.vocab_size, n=9, seed=1)
    mesh = parallel.make_mesh(
        configs.get("tiny-v2", **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.expert": 2}).mesh
    )
    placed = jax.device_put(variables, parallel.variable_shardings(abstract_variables(cfg), mesh))
    one = Scorer(cfg, variables, rows=8, seq_len=SEQ)(pairs)
    sharded = Scorer(cfg, placed, rows=8, seq_len=SEQ, mesh=mesh)(pairs)
    np.testing.assert_allclose(sharded.logprob, one.logprob, rtol=1e-5, atol=1e-5)
    assert (sharded.greedy == one.greedy).all()
    with pytest.raises(ValueError, match="multiple of the mesh's 8 batch shards"):
        Scorer(cfg, placed, rows=4, seq_len=SEQ, mesh=mesh)


@pytest.mark.parametrize(
    "pair, match",
    [
        (([], [5]), "pair 0: the context is empty"),
        (([5], []), "pair 0: the continuation is empty"),
        (([5], [6] * (SEQ + 1)), "pair 0: the continuation has 49 tokens"),
    ],
)
def test_bad_pairs_are_refused_by_index(pair, match):
    with pytest.raises(ValueError, match=match):
        pack([pair], rows=1, seq_len=SEQ)
