"""KV-cache generation: cached prefill + decode logits equal the uncached forward; greedy,
EOS, temperature and top-p behave; a batch of different-length prompts decodes together."""

import dataclasses

import jax
import numpy as np
import pytest

import lingjax
from lingjax.evaluate import generate, inference_config, init_cache, pad_prompts, sample, step
from tests.support.hf_synth import random_variables

PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12]]  # different lengths: left padding is exercised
NEW = 6
_step = jax.jit(step, static_argnums=0)


@pytest.fixture(scope="module")
def model():
    """Ling 2.0 in miniature: a dense and a MoE stack (two caches), QK-norm and partial RoPE
    before the cache, MTP layers that decoding skips. Ling v1 differs only after the cache
    (NormHead, softmax routing), which the parity tests cover."""
    cfg = lingjax.configs.get("tiny-v2", num_layers=3).model
    cfg = dataclasses.replace(cfg, remat="full")  # generation must not depend on it
    variables = jax.tree.map(jax.numpy.asarray, random_variables(cfg, seed=0, std=0.15))
    return cfg, variables


@pytest.fixture(scope="module")
def greedy(model):
    cfg, variables = model
    return generate(cfg, variables, PROMPTS, max_new_tokens=NEW, eos_id=-1)


def _right_padded(seqs, vocab):
    L = max(len(s) for s in seqs)
    tokens = np.zeros((len(seqs), L), np.int32)
    seg = np.zeros((len(seqs), L), np.int32)
    for b, s in enumerate(seqs):
        tokens[b, : len(s)], seg[b, : len(s)] = s, 1
    return tokens, seg


def test_cached_prefill_and_decode_match_the_uncached_forward(model):
    cfg, variables = model
    icfg = inference_config(cfg)
    rng = np.random.default_rng(0)
    cont = rng.integers(3, cfg.vocab_size, (len(PROMPTS), NEW)).astype(np.int32)
    tokens, seg, pos = pad_prompts(PROMPTS, pad_id=0)
    cache = init_cache(icfg, len(PROMPTS), tokens.shape[1] + cont.shape[1])
    logits, cache = _step(icfg, variables, cache, tokens, seg, pos)
    got = [np.asarray(logits)]
    next_pos = pos[:, -1:] + 1
    for i in range(cont.shape[1]):  # teacher-forced decode steps of one token
        logits, cache = _step(icfg, variables, cache, cont[:, i : i + 1], seg[:, -1:], next_pos)
        got.append(np.asarray(logits))
        next_pos = next_pos + 1
    got = np.concatenate(got, axis=1)  # [B, P + NEW, V]
    full = [p + c.tolist() for p, c in zip(PROMPTS, cont, strict=True)]
    ref = np.asarray(lingjax.forward(cfg, variables, *_right_padded(full, cfg.vocab_size)))
    assert ref.std() > 0.1
    P = tokens.shape[1]
    for b, p in enumerate(PROMPTS):
        ours = got[b, P - len(p) :]  # drop the left padding
        np.testing.assert_allclose(ours, ref[b, : len(full[b])], rtol=1e-5, atol=1e-5)


def test_greedy_generation_follows_the_forward_argmax(model, greedy):
    cfg, variables = model
    out = greedy
    assert out.tokens.shape == (len(PROMPTS), NEW) and list(out.lengths) == [NEW] * len(PROMPTS)
    full = [p + row.tolist() for p, row in zip(PROMPTS, out.tokens, strict=True)]
    ref = np.asarray(lingjax.forward(cfg, variables, *_right_padded(full, cfg.vocab_size)))
    for b, p in enumerate(PROMPTS):
        pred = ref[b, len(p) - 1 : len(full[b]) - 1].argmax(-1)
        np.testing.assert_array_equal(out.tokens[b], pred)
    assert len({tuple(r) for r in out.tokens}) > 1  # the rows really differ


def test_eos_stops_each_row_and_pads_the_rest(model, greedy):
    cfg, variables = model
    eos = int(greedy.tokens[0, 2])
    out = generate(cfg, variables, PROMPTS, max_new_tokens=NEW, eos_id=eos, pad_id=0)
    for b in range(len(PROMPTS)):
        hits = np.flatnonzero(greedy.tokens[b] == eos)
        n = hits[0] + 1 if hits.size else NEW
        assert out.lengths[b] == n
        np.testing.assert_array_equal(out.tokens[b, :n], greedy.tokens[b, :n])
        assert (out.tokens[b, n:] == 0).all()
    assert out.as_lists()[0][-1] == eos and out.lengths[0] <= 3


def test_sampling_is_seeded_and_top_p_one_token_is_greedy(model, greedy):
    cfg, variables = model
    kw = dict(max_new_tokens=NEW, eos_id=-1, temperature=1.5)
    a = generate(cfg, variables, PROMPTS, seed=1, **kw)
    b = generate(cfg, variables, PROMPTS, seed=1, **kw)
    c = generate(cfg, variables, PROMPTS, seed=2, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens) or not np.array_equal(a.tokens, greedy.tokens)
    nucleus = generate(cfg, variables, PROMPTS, seed=3, top_p=1e-6, **kw)
    np.testing.assert_array_equal(nucleus.tokens, greedy.tokens)


def test_sample_keeps_to_the_nucleus():
    probs = np.array([0.5, 0.3, 0.1, 0.05, 0.05])
    logits = np.log(np.tile(probs, (4000, 1))).astype(np.float32)
    draws = np.asarray(jax.jit(sample)(logits, jax.random.key(0), 1.0, 0.75))
    assert set(np.unique(draws)) == {0, 1}  # 0.5 < 0.75 <= 0.8: the top two only
    assert abs((draws == 0).mean() - 0.5 / 0.8) < 0.03  # renormalised inside the nucleus
    full = np.asarray(jax.jit(sample)(logits, jax.random.key(1), 1.0, 1.0))
    assert abs((full == 2).mean() - 0.1) < 0.02
    greedy = np.asarray(jax.jit(sample)(logits, jax.random.key(1), 0.0, 1.0))
    assert (greedy == 0).all()


def test_bad_requests_are_refused(model):
    cfg, variables = model
    with pytest.raises(ValueError, match="at least one token"):
        generate(cfg, variables, [[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(cfg, variables, [[1] * 10], max_new_tokens=cfg.max_position_embeddings)
    with pytest.raises(ValueError, match="vocab_size"):
        generate(cfg, variables, [[cfg.vocab_size]], max_new_tokens=2)
    with pytest.raises(ValueError, match="top_p"):
        generate(cfg, variables, [[1]], max_new_tokens=2, top_p=0.0)
