"""The pure train step: expert-bias update from the step's own counts, determinism, and the
stochastic routing warmup blend."""

import jax
import jax.numpy as jnp
import numpy as np

from lingjax import configs
from lingjax.model import BUFFERS, Transformer, moe_counts_by_bias_path
from lingjax.model.router import warmup_logits
from lingjax.train import expert_bias_update, init_state, make_optimizer, make_train_step
from tests.support.parallel import batch as support_batch


def test_step_updates_expert_bias_from_its_counts_and_is_deterministic():
    # 2 layers: a dense one and a MoE one, plus the MTP layer (also MoE, its own bias).
    cfg = configs.get("tiny-v2", **{"train.expert_bias_rate": 0.01, "model.num_layers": 2})
    tx = make_optimizer(cfg.train.optimizer_config())
    step = jax.jit(make_train_step(cfg.model, cfg.train.step_config(), tx))
    state = jax.jit(lambda key: init_state(cfg.model, tx, key))(jax.random.key(0))
    # A non-zero starting bias, so the selection depends on it.
    state = state.replace(
        buffers=jax.tree.map(
            lambda b: jax.random.normal(jax.random.key(1), b.shape) * 0.01, state.buffers
        )
    )
    batch = support_batch(cfg, rows=2, length=32)
    new, metrics = step(state, batch)
    again, metrics2 = step(state, batch)
    pure = (new.params, new.buffers, new.opt_state, metrics)
    for a, b in zip(
        jax.tree.leaves(pure),
        jax.tree.leaves((again.params, again.buffers, again.opt_state, metrics2)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)

    _, aux = jax.jit(Transformer(cfg.model).apply)(
        {"params": state.params, BUFFERS: state.buffers},
        batch["tokens"],
        batch["segment_ids"],
        batch["positions"],
    )
    counts = moe_counts_by_bias_path(aux, cfg.model.num_mtp_layers)
    expected = jax.tree.map(lambda b, c: expert_bias_update(b, c, 0.01), state.buffers, counts)
    for a, b in zip(jax.tree.leaves(new.buffers), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7)
    assert not np.allclose(jax.tree.leaves(new.buffers)[0], jax.tree.leaves(state.buffers)[0])
    # The bias is not trained: it has no optimizer state.
    assert "expert_bias" not in str(jax.tree_util.tree_structure(new.opt_state))
    assert int(new.step) == 1 and np.isfinite(float(metrics["grad_norm"]))


def test_warmup_blend_endpoints():
    logits = jax.random.normal(jax.random.key(0), (4096, 8)) * jnp.arange(1, 9) + jnp.arange(8)
    valid = jnp.ones(4096, bool)
    np.testing.assert_allclose(
        warmup_logits(logits, valid, jnp.float32(1.0), jax.random.key(1)), logits, atol=1e-6
    )
    noise = warmup_logits(logits, valid, jnp.float32(0.0), jax.random.key(1))
    # Pure noise with the batch's per-expert mean and std, independent of the real logits.
    np.testing.assert_allclose(noise.mean(0), logits.mean(0), atol=0.3)
    np.testing.assert_allclose(noise.std(0), logits.std(0), rtol=0.1)
    assert abs(np.corrcoef(noise[:, 7], logits[:, 7])[0, 1]) < 0.1
