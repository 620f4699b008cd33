"""Whole-model behaviour: packed sequences equal their documents run one by one (main and MTP
logits), fp32 logits, scanned layer stacks and the parameter table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lingjax


@pytest.fixture(scope="module", params=["tiny", "tiny-v2"])
def model(request):
    cfg = lingjax.configs.get(request.param, num_layers=3).model
    return cfg, lingjax.init_params(cfg, jax.random.key(0))


def test_packed_batch_equals_documents_one_by_one(model):
    cfg, variables = model
    lengths = [5, 9, 3]
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, cfg.vocab_size, n) for n in lengths]
    L = 20
    tokens = np.zeros((1, L), np.int32)
    seg = np.zeros((1, L), np.int32)
    pos = 0
    for i, d in enumerate(docs):
        tokens[0, pos : pos + len(d)] = d
        seg[0, pos : pos + len(d)] = i + 1
        pos += len(d)
    packed = lingjax.forward(cfg, variables, tokens, seg)
    assert packed.dtype == jnp.float32 and packed.shape == (1, L, cfg.vocab_size)
    start = 0
    for d in docs:
        # The document alone at the start of a row, the rest padding (segment 0: never
        # attended to): the same shape as the packed row, so one compiled forward serves both.
        alone_tokens = np.zeros((1, L), np.int32)
        alone_tokens[0, : len(d)] = d
        alone_seg = (np.arange(L) < len(d)).astype(np.int32)[None]
        alone = lingjax.forward(cfg, variables, alone_tokens, alone_seg)
        np.testing.assert_allclose(
            packed[0, start : start + len(d)], alone[0, : len(d)], rtol=2e-5, atol=2e-5
        )
        start += len(d)


def test_packed_mtp_logits_equal_documents_one_by_one():
    cfg = lingjax.configs.get("tiny-v2").model
    variables = lingjax.init_params(cfg, jax.random.key(1))
    model = lingjax.model.Transformer(cfg)
    rng = np.random.default_rng(1)
    docs = [rng.integers(3, cfg.vocab_size, n) for n in (6, 8)]
    tokens = np.concatenate(docs)[None].astype(np.int32)
    seg = np.concatenate([np.full(len(d), i + 1) for i, d in enumerate(docs)])[None]
    apply = jax.jit(model.apply)
    L = tokens.shape[1]
    _, aux = apply(variables, tokens, jnp.asarray(seg, jnp.int32))
    start = 0
    for d in docs:
        alone = np.zeros((1, L), np.int32)
        alone[0, : len(d)] = d
        _, aux1 = apply(variables, alone, jnp.asarray((np.arange(L) < len(d))[None], jnp.int32))
        # The last position's MTP input is the next document's token (its label is masked).
        n = len(d) - 1
        np.testing.assert_allclose(
            aux["mtp_logits"][0, 0, start : start + n],
            aux1["mtp_logits"][0, 0, :n],
            rtol=2e-5,
            atol=2e-5,
        )
        start += len(d)


def test_scanned_stacks_and_logical_axes():
    cfg = lingjax.configs.get("tiny-v2").model
    boxed = lingjax.model.abstract_variables(cfg)
    p = boxed["params"]
    assert p["dense_layers"]["attn"]["qkv"].value.shape == (1, 128, 4 + 2 * 2, 32)
    moe = p["moe_layers"]["moe"]
    assert moe["w_gate_up"].value.shape == (2, 16, 128, 2, 48)  # [layers, E, D, gate|up, F]
    assert moe["w_gate_up"].names == ("layers", "expert", "embed", None, "expert_mlp")
    assert "w_gate" not in moe and "w_up" not in moe
    bias = boxed["buffers"]["moe_layers"]["moe"]["router"]["expert_bias"]
    assert bias.value.dtype == jnp.float32 and bias.value.shape == (2, 16)
    assert "mtp_0" in p
    for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names")):
        assert len(leaf.names) == leaf.value.ndim  # every dim has a logical name (or None)
