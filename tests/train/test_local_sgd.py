"""EDiT local-SGD sync maths (lingjax/train/local_sgd.py) against hand computations in numpy:
the EWMA detector step by step, elimination (warmup, planted outlier, one-sided rule, dynamic
threshold), the weights, clipping, the Nesterov and "average" outer steps over two syncs, the
one-effective-worker identity, and jit = eager.

Replica r's local unit is moved from the synced unit by exactly `scales[r]` (full-unit norm) in a
random direction, so every norm in a test is known by construction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lingjax.train.local_sgd import (
    Detector,
    PenaltyConfig,
    clip_by_unit_norm,
    detector_init,
    detector_judge,
    detector_update,
    outer_optimizer,
    pseudo_gradient_norms,
    relative_norms,
    sync_unit,
    sync_weights,
)

R = 4
SYNC = jax.jit(sync_unit, static_argnames=("cfg",))


def _unit(rng):
    """One sync unit: several leaves of different shapes, fp32."""
    tree = {
        "attn": {"w": rng.normal(size=(6, 5))},
        "mlp": {"w": rng.normal(size=(5, 3)), "b": rng.normal(size=(3,))},
    }
    return jax.tree.map(lambda x: x.astype(np.float32), tree)


def _locals(synced, scales, rng):
    """[R, ...] local units with synced - local_r of full-unit norm scales[r]."""
    leaves, treedef = jax.tree.flatten(synced)
    stacked = [[] for _ in leaves]
    for c in scales:
        dirs = [rng.normal(size=x.shape) for x in leaves]
        norm = np.sqrt(sum((d**2).sum() for d in dirs))
        for out, x, d in zip(stacked, leaves, dirs, strict=True):
            out.append(np.asarray(x, np.float64) - c * d / norm)
    return treedef.unflatten([np.stack(s).astype(np.float32) for s in stacked])


def _flat(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _hand_norms(synced, local):
    pairs = zip(_flat(synced), _flat(local), strict=True)
    return np.sqrt(sum(((s[None] - loc) ** 2).reshape(R, -1).sum(1) for s, loc in pairs))


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _hand_delta(synced, local, temperature, clip):
    """The merged, clipped pseudo-gradient, leaves in float64 (no elimination)."""
    w = _softmax(-_hand_norms(synced, local) / temperature)
    pairs = zip(_flat(synced), _flat(local), strict=True)
    delta = [np.tensordot(w, s[None] - loc, axes=1) for s, loc in pairs]
    norm = np.sqrt(sum((d**2).sum() for d in delta))
    scale = min(1.0, clip / (norm + 1e-6)) if clip > 0 else 1.0
    return [d * scale for d in delta]


def _close(tree, leaves, rtol=1e-5, atol=1e-6):
    for got, want in zip(_flat(tree), leaves, strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- detector


def _hand_spread(n):
    """1.4826 median |n / median(n) - 1| over the finite norms (float64)."""
    n = np.asarray(n, np.float64)
    q = n[np.isfinite(n)] / np.median(n[np.isfinite(n)])
    return 1.4826 * np.median(np.abs(q - 1))


def test_ewma_of_the_robust_spread_matches_hand_loop():
    rng = np.random.default_rng(0)
    cfg = PenaltyConfig(detector_alpha=0.1, detector_warmup=5)
    W = 8
    syncs = (5.0 * (1 + 0.03 * rng.normal(size=(30, R)))).astype(np.float32)
    syncs[:, 3] *= np.linspace(1, 2, 30)  # a replica drifting away: the spread ignores it
    probe = (5.0 * (1 + 0.03 * rng.normal(size=R))).astype(np.float32)
    a = 0.1
    spread, zs = 0.0, []
    det = detector_init(W)
    for count, n in enumerate(syncs):  # count: syncs observed before n
        _, z = detector_judge(det, jnp.asarray(probe), cfg)
        q = probe / np.median(probe)
        want = (q - 1) / max(spread, 1e-6) if count >= 1 else np.zeros(R)
        np.testing.assert_allclose(np.asarray(z), want, rtol=2e-5, atol=1e-5)
        if count >= cfg.detector_warmup:  # warm; every replica kept: the mean squared z
            zs.append((((n / np.median(n) - 1) / spread) ** 2).mean())
        s_n = _hand_spread(n)
        spread = s_n if count == 0 else (1 - a) * spread + a * s_n
        det = detector_update(det, jnp.asarray(n), cfg)
        np.testing.assert_allclose(float(det.spread), spread, rtol=2e-5)
        assert int(det.count) == count + 1
        assert int(det.z_count) == min(len(zs), W)
    assert int(det.z_count) == W and len(zs) > W  # the ring buffer wrapped
    ring = np.roll(np.asarray(det.recent_z), -int(det.z_next))  # oldest first
    np.testing.assert_allclose(ring, np.array(zs[-W:]), rtol=1e-4)
    # Fewer than two finite norms: nothing to compare, the state stays.
    same = detector_update(det, jnp.asarray([np.nan, 1.0, np.nan, np.nan], jnp.float32), cfg)
    assert all(np.array_equal(a, b) for a, b in zip(_flat(same), _flat(det), strict=True))


def test_eliminated_replicas_are_left_out_of_recent_z_but_not_of_the_robust_spread():
    cfg = PenaltyConfig(detector_alpha=0.5, detector_warmup=1)
    det = detector_update(detector_init(4), jnp.asarray([4.0, 5.0, 6.0, 5.0]), cfg)
    n = np.array([5.5, 4.5, 5.0, 50.0], np.float32)
    mask = np.array([True, True, True, False])
    new = detector_update(det, jnp.asarray(n), cfg, mask=jnp.asarray(mask))
    s0 = _hand_spread([4.0, 5.0, 6.0, 5.0])
    assert float(new.spread) == pytest.approx(0.5 * s0 + 0.5 * _hand_spread(n), rel=1e-5)
    z = (n / np.median(n) - 1) / s0
    assert float(new.recent_z[0]) == pytest.approx((z[mask] ** 2).mean(), rel=1e-5)


def test_honest_replicas_are_not_eliminated_whatever_the_trend():
    """8 replicas with independent +-5% noise around a norm that grows 10x over the run (an LR
    warmup, a falling loss): about the Gaussian tail (0.13% at threshold 3) of the judged norms
    is dropped; one 1.5x norm stands out and is."""
    rng = np.random.default_rng(3)
    cfg = PenaltyConfig()  # EDiT: alpha 0.02, warmup 120, threshold 3
    det = detector_init(cfg.detector_warmup)
    judge = jax.jit(detector_judge, static_argnames=("cfg",))
    update = jax.jit(detector_update, static_argnames=("cfg",))
    dropped = judged = 0
    for i, level in enumerate(np.geomspace(0.1, 1.0, 400)):
        norms = jnp.asarray(level * (1.0 + 0.05 * rng.normal(size=8)), jnp.float32)
        out, _ = judge(det, norms, cfg)
        dropped += int(np.asarray(out).sum())
        judged += 8 * (i >= cfg.detector_warmup)
        det = update(det, norms, cfg, mask=~out)
    assert dropped <= 0.005 * judged, (dropped, judged)
    out, _ = judge(det, jnp.asarray([1.0, 1.02, 1.5, 0.97], jnp.float32), cfg)
    assert np.asarray(out).tolist() == [False, False, True, False]


def test_a_replica_bad_from_the_start_stays_eliminated():
    """Replica 2 is 30% off from its first sync on: the robust spread never learns it as
    normal (a mean/variance EWMA over all replicas did: eliminated once in 30 syncs)."""
    rng = np.random.default_rng(13)
    cfg = PenaltyConfig(detector_warmup=5, detector_alpha=0.3)
    det = detector_init(cfg.detector_warmup)
    out_of = []
    for _ in range(30):
        n = 1.0 + 0.02 * rng.normal(size=R)
        n[2] = 1.3 + 0.02 * rng.normal()
        out, _ = detector_judge(det, jnp.asarray(n, jnp.float32), cfg)
        out_of.append(np.asarray(out).tolist())
        det = detector_update(det, jnp.asarray(n, jnp.float32), cfg, mask=~out)
    assert all(o == [False, False, True, False] for o in out_of[cfg.detector_warmup :]), out_of


def test_no_elimination_in_warmup_then_planted_outlier_is_eliminated_one_sided():
    rng = np.random.default_rng(1)
    cfg = PenaltyConfig(detector_warmup=20, outer="average", clip=0.0)
    det = detector_init(cfg.detector_warmup)
    synced = _unit(rng)
    for i in range(cfg.detector_warmup):
        if i == 10:  # a probe sync (its outputs are dropped): 50x outlier during warmup
            loc = _locals(synced, [1.0, 1.0, 50.0, 1.0], rng)
            _, det2, _, info = SYNC(synced, loc, det, None, cfg)
            assert not np.asarray(info["eliminated"]).any()
            w = np.asarray(info["weights"], np.float64)
            assert w[2] > 0
            n = _hand_norms(synced, loc)
            np.testing.assert_allclose(w, _softmax(-n), rtol=1e-5)
            want = 0.98 * float(det.spread) + 0.02 * _hand_spread(n)  # the statistics move
            np.testing.assert_allclose(float(det2.spread), want, rtol=1e-5)
        loc = _locals(synced, 1.0 + 0.05 * rng.normal(size=R), rng)
        synced, det, _, info = SYNC(synced, loc, det, None, cfg)
        assert not np.asarray(info["eliminated"]).any()
    assert int(det.count) == cfg.detector_warmup

    loc = _locals(synced, [1.0, 1.02, 50.0, 0.01], rng)  # replica 3: a much SMALLER norm
    new, _, _, info = SYNC(synced, loc, det, None, cfg)
    assert np.asarray(info["eliminated"]).tolist() == [False, False, True, False]
    z, thr = np.asarray(info["z"]), float(info["threshold"])
    assert z[3] < -thr  # a two-sided rule would have dropped replica 3
    n = _hand_norms(synced, loc)
    np.testing.assert_allclose(np.asarray(info["norms"]), n, rtol=1e-5)
    np.testing.assert_allclose(z, (n / np.median(n) - 1) / float(det.spread), rtol=1e-4)
    w = np.asarray(info["weights"], np.float64)
    assert w[2] == 0.0
    np.testing.assert_allclose(w[[0, 1, 3]], _softmax(-n[[0, 1, 3]]), rtol=1e-5)
    pairs = zip(_flat(synced), _flat(loc), strict=True)
    want = [s - np.tensordot(w, s[None] - x, axes=1) for s, x in pairs]
    _close(new, want)


def test_dynamic_threshold_scales_with_recent_z():
    rng = np.random.default_rng(2)
    cfg = PenaltyConfig(detector_warmup=10)
    W = 10
    loud = (2.5 * rng.normal(size=W)) ** 2  # mean squared z-scores of a lagging spread
    rms = float(np.sqrt(loud.mean()))
    assert rms > 1.5  # the case under test
    spread = 0.1
    det = Detector(
        spread=jnp.float32(spread),
        count=jnp.int32(W),
        recent_z=jnp.asarray(loud, jnp.float32),
        z_count=jnp.int32(W),
        z_next=jnp.int32(0),
    )
    z_mid, z_hi = (3.0 + 3.0 * rms) / 2, 3.0 * rms + 0.5  # between 3 and 3 rms; above 3 rms
    # Five replicas, three at the median: the relative norms are these norms themselves.
    norms = jnp.asarray(1.0 + spread * np.array([z_mid, z_hi, 0.0, 0.0, 0.0]), jnp.float32)
    out, z = detector_judge(det, norms, cfg)
    np.testing.assert_allclose(np.asarray(z)[:2], [z_mid, z_hi], rtol=1e-4)
    assert np.asarray(out).tolist() == [False, True, False, False, False]
    # A calm history (rms < 1): the base threshold 3 applies and z_mid is an outlier too.
    calm = det.replace(recent_z=jnp.full((W,), 0.25, jnp.float32))
    assert np.asarray(detector_judge(calm, norms, cfg)[0]).tolist() == [
        True,
        True,
        False,
        False,
        False,
    ]
    # A partly filled buffer: only the filled entries count (the rest is garbage here).
    part = det.replace(recent_z=det.recent_z.at[3:].set(1e4), z_count=jnp.int32(3))
    thr = 3.0 * max(1.0, float(np.sqrt(loud[:3].mean())))
    near = jnp.asarray(1.0 + spread * np.array([0.99 * thr, 1.01 * thr, 0, 0, 0]), jnp.float32)
    assert np.asarray(detector_judge(part, near, cfg)[0]).tolist() == [
        False,
        True,
        False,
        False,
        False,
    ]
    # Not warm yet: nothing is an outlier, however large.
    cold = det.replace(count=jnp.int32(W - 1))
    assert not np.asarray(detector_judge(cold, norms.at[0].set(100.0), cfg)[0]).any()


# ----------------------------------------------------------------------------- merge


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_weights_are_a_softmax_of_minus_norm_over_t(temperature):
    rng = np.random.default_rng(3)
    cfg = PenaltyConfig(temperature=temperature)
    n = np.abs(rng.normal(size=5)) * 2 + 0.5
    none = np.zeros(5, bool)
    w = sync_weights(jnp.asarray(n, jnp.float32), jnp.asarray(none), cfg)
    np.testing.assert_allclose(np.asarray(w), _softmax(-n / temperature), rtol=1e-5)
    elim = np.array([False, True, False, False, True])
    w = np.asarray(sync_weights(jnp.asarray(n, jnp.float32), jnp.asarray(elim), cfg))
    want = np.where(elim, 0.0, np.exp(-n / temperature))
    np.testing.assert_allclose(w, want / want.sum(), rtol=1e-5)
    assert np.all(w[elim] == 0.0)
    # A huge temperature would leave the 1e6 penalty's weight large: it is still exactly 0.
    hot = PenaltyConfig(temperature=1e7)
    w = np.asarray(sync_weights(jnp.asarray(n, jnp.float32), jnp.asarray(elim), hot))
    assert np.all(w[elim] == 0.0) and np.isclose(w.sum(), 1.0)


def test_step_weighting_mix():
    rng = np.random.default_rng(4)
    cfg = PenaltyConfig(step_weight=0.5)
    n = np.abs(rng.normal(size=R)) + 0.5
    steps = np.array([10, 7, 13, 9])
    norms, none = jnp.asarray(n, jnp.float32), jnp.zeros(R, bool)
    w = sync_weights(norms, none, cfg, jnp.asarray(steps))
    np.testing.assert_allclose(
        np.asarray(w), 0.5 * _softmax(-n) + 0.5 * steps / steps.sum(), rtol=1e-5
    )
    # Eliminated replicas keep weight 0; both shares are over the kept replicas.
    elim = np.array([False, False, True, False])
    w = np.asarray(sync_weights(norms, jnp.asarray(elim), cfg, jnp.asarray(steps)))
    k = ~elim
    want = np.zeros(R)
    want[k] = 0.5 * _softmax(-n[k]) + 0.5 * steps[k] / steps[k].sum()
    np.testing.assert_allclose(w, want, rtol=1e-5)
    with pytest.raises(ValueError, match="step_weight"):
        sync_weights(norms, none, cfg)
    off = PenaltyConfig()  # r = 0: steps are ignored
    np.testing.assert_allclose(
        np.asarray(sync_weights(norms, none, off, jnp.asarray(steps))), _softmax(-n), rtol=1e-5
    )


def test_a_diverged_replica_is_eliminated_even_in_warmup():
    rng = np.random.default_rng(5)
    synced = _unit(rng)
    loc = _locals(synced, [1.0, 1.2, 0.9, 1.1], rng)
    loc["mlp"]["w"][1, 0, 0] = np.nan
    cfg = PenaltyConfig(clip=0.0)
    det = detector_init(cfg.detector_warmup)
    tx = outer_optimizer(cfg)
    new, det, _, info = sync_unit(synced, loc, det, tx.init(synced), cfg)
    assert np.asarray(info["eliminated"]).tolist() == [False, True, False, False]
    assert float(info["weights"][1]) == 0.0
    assert all(np.isfinite(x).all() for x in _flat(new)) and np.isfinite(float(det.spread))


def test_every_replica_eliminated_keeps_synced_outer_state_and_detector():
    rng = np.random.default_rng(12)
    synced = _unit(rng)
    loc = jax.tree.map(lambda x: np.full_like(x, np.nan), _locals(synced, [1.0] * R, rng))
    cfg = PenaltyConfig()
    det = detector_update(
        detector_init(cfg.detector_warmup), jnp.asarray([1.0, 1.1, 0.9, 1.0]), cfg
    )
    opt_state = jax.tree.map(lambda x: x + 0.3, outer_optimizer(cfg).init(synced))
    new, new_det, new_state, info = sync_unit(synced, loc, det, opt_state, cfg)
    assert np.asarray(info["eliminated"]).all()
    assert np.all(np.asarray(info["weights"]) == 0.0)
    for got, want in ((new, synced), (new_det, det), (new_state, opt_state)):
        _close(got, _flat(want), rtol=0, atol=0)


def test_clip_by_unit_norm():
    rng = np.random.default_rng(6)
    tree = jax.tree.map(lambda x: 5 * x, _unit(rng))
    norm = np.sqrt(sum((x**2).sum() for x in _flat(tree)))
    assert norm > 2.0
    scale = min(1.0, 2.0 / (norm + 1e-6))
    _close(clip_by_unit_norm(tree, 2.0), [x * scale for x in _flat(tree)], rtol=1e-6)
    clipped = np.sqrt(sum((x**2).sum() for x in _flat(clip_by_unit_norm(tree, 2.0))))
    np.testing.assert_allclose(clipped, 2.0, rtol=1e-5)
    _close(clip_by_unit_norm(tree, 10 * norm), _flat(tree), rtol=0, atol=0)  # below the clip
    for off in (0.0, -1.0):
        assert clip_by_unit_norm(tree, off) is tree


def test_relative_norms_cancel_what_every_replica_shares():
    """Every replica's norm growing together (an LR warmup) moves nothing the detector sees;
    one replica standing out does. Non-finite norms stay non-finite; with one replica there is
    nothing to compare (1), and one replica alone is never an outlier unless non-finite."""
    n = np.array([0.40, 0.41, 0.39, 0.40], np.float32)
    np.testing.assert_allclose(relative_norms(jnp.asarray(n * 1.5)), n / np.median(n), rtol=1e-6)
    bad = n.copy()
    bad[2] = np.nan
    rel = np.asarray(relative_norms(jnp.asarray(bad)))
    assert np.isnan(rel[2]) and rel[1] == pytest.approx(0.41 / 0.40)
    assert float(relative_norms(jnp.asarray([0.3], jnp.float32))[0]) == pytest.approx(1.0)
    det = detector_update(detector_init(3), jnp.asarray(n), PenaltyConfig())
    det = det.replace(count=jnp.int32(500))
    for one, want in ((1e3, False), (np.nan, True)):
        out, _ = detector_judge(det, jnp.asarray([one], jnp.float32), PenaltyConfig())
        assert np.asarray(out).tolist() == [want]
    np.testing.assert_array_equal(relative_norms(jnp.zeros(4)), 1.0)  # nobody moved: as usual


def test_pseudo_gradient_norms_and_shape_errors():
    rng = np.random.default_rng(7)
    synced = _unit(rng)
    loc = _locals(synced, [0.5, 1.0, 2.0, 3.0], rng)
    n = np.asarray(pseudo_gradient_norms(synced, loc))
    np.testing.assert_allclose(n, [0.5, 1.0, 2.0, 3.0], rtol=1e-5)
    np.testing.assert_allclose(n, _hand_norms(synced, loc), rtol=1e-5)
    with pytest.raises(ValueError, match="leading axis"):
        pseudo_gradient_norms(synced, jax.tree.map(lambda x: x[0], loc))
    with pytest.raises(ValueError, match="tree structure"):
        pseudo_gradient_norms(synced, {"attn": loc["attn"]})
    cfg = PenaltyConfig()
    with pytest.raises(ValueError, match="opt_state"):
        sync_unit(synced, loc, detector_init(cfg.detector_warmup), None, cfg)
    with pytest.raises(ValueError, match="window"):
        detector_init(0)


def test_nesterov_outer_step_over_two_syncs():
    rng = np.random.default_rng(8)
    cfg = PenaltyConfig(clip=1.0)  # default Nesterov SGD, lr 0.7, momentum 0.8
    lr, mu = cfg.outer_lr, cfg.outer_momentum
    synced = _unit(rng)
    det, opt_state = detector_init(cfg.detector_warmup), outer_optimizer(cfg).init(synced)
    theta, v = _flat(synced), [np.zeros_like(x) for x in _flat(synced)]
    for _ in range(2):
        loc = _locals(synced, 3.0 * (1 + 0.2 * rng.normal(size=R)), rng)
        g = _hand_delta(synced, loc, cfg.temperature, cfg.clip)
        v = [mu * vi + gi for vi, gi in zip(v, g, strict=True)]
        theta = [t - lr * (gi + mu * vi) for t, gi, vi in zip(theta, g, v, strict=True)]
        synced, det, opt_state, info = sync_unit(synced, loc, det, opt_state, cfg)
        assert float(info["delta_norm"]) > cfg.clip  # the clip was active
        np.testing.assert_allclose(float(info["clipped_norm"]), cfg.clip, rtol=1e-5)
        _close(synced, theta)
    _close(opt_state, v)  # optax's trace is the hand momentum


def test_average_outer_step_is_synced_minus_delta():
    rng = np.random.default_rng(9)
    cfg = PenaltyConfig(outer="average", temperature=0.5, clip=1.0)
    synced = _unit(rng)
    loc = _locals(synced, 2.0 + rng.normal(size=R) ** 2, rng)
    new, _, state, _ = sync_unit(synced, loc, detector_init(cfg.detector_warmup), None, cfg)
    assert state is None and outer_optimizer(cfg) is None
    delta = _hand_delta(synced, loc, cfg.temperature, cfg.clip)
    _close(new, [s - d for s, d in zip(_flat(synced), delta, strict=True)])


def test_one_effective_worker_reduces_to_its_local_update():
    rng = np.random.default_rng(10)
    cfg = PenaltyConfig(outer="average", temperature=0.37, clip=0.0)
    synced = _unit(rng)
    one = _locals(synced, [1.7], rng)
    loc = jax.tree.map(lambda x: np.repeat(x, R, axis=0), one)
    new, _, _, info = sync_unit(synced, loc, detector_init(cfg.detector_warmup), None, cfg)
    np.testing.assert_allclose(np.asarray(info["weights"]), np.full(R, 1 / R), rtol=1e-6)
    _close(new, [x[0] for x in _flat(one)], rtol=1e-6, atol=1e-6)


def test_jit_matches_eager():
    rng = np.random.default_rng(11)
    cfg = PenaltyConfig(detector_warmup=8, step_weight=0.5, clip=1.5)
    synced = _unit(rng)
    det = Detector(
        spread=jnp.float32(0.04),
        count=jnp.int32(30),
        recent_z=jnp.asarray(rng.normal(size=8), jnp.float32),
        z_count=jnp.int32(8),
        z_next=jnp.int32(3),
    )
    opt_state = outer_optimizer(cfg).init(synced)
    opt_state = jax.tree.map(lambda x: x + 0.1, opt_state)  # a non-zero momentum
    loc = _locals(synced, [2.0, 2.1, 40.0, 1.9], rng)
    steps = jnp.asarray([10, 12, 11, 7])
    eager = sync_unit(synced, loc, det, opt_state, cfg, steps)
    jitted = SYNC(synced, loc, det, opt_state, cfg, steps)
    assert np.asarray(eager[3]["eliminated"]).tolist() == [False, False, True, False]
    for a, b in zip(_flat(eager), _flat(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "field, value",
    [
        ("detector_alpha", 0.0),
        ("detector_alpha", 1.5),
        ("detector_warmup", -1),
        ("detector_warmup", 2.5),
        ("detector_threshold", 0.0),
        ("temperature", -1.0),
        ("clip", float("inf")),
        ("step_weight", 1.1),
        ("outer", "adam"),
        ("outer_lr", 0.0),
        ("outer_momentum", 1.0),
    ],
)
def test_validate_names_the_field(field, value):
    cfg = PenaltyConfig(**{field: value})
    with pytest.raises(ValueError, match=f"PenaltyConfig.{field}="):
        cfg.validate()
    PenaltyConfig().validate()
