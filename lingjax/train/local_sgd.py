"""EDiT local-SGD synchronisation (docs/ling_spec.md §3.5; arXiv 2412.07210): the pure, jittable
maths of one sync of one sync unit.

R replicas each train with their own data and inner optimiser; every tau steps each sync unit
(one top-level parameter subtree, e.g. one decoder layer) is merged on its own:
  1. pseudo-gradients  delta_r = theta_synced - theta_local_r  and their full-unit L2 norms n_r;
  2. anomaly elimination: a replica whose norm stands out from its peers' at this sync, by the
     unit's EWMA z-score detector (`Detector`, below), is dropped from this sync;
  3. weighted averaging: w = softmax(-n / T) over the kept replicas (A-EDiT: optionally mixed
     with the replicas' local step counts), delta = sum_r w_r delta_r;
  4. clipping of delta by its full-unit norm;
  5. the outer update of theta_synced with gradient delta (Nesterov SGD), or theta_synced -=
     delta ("average").
`sync_unit` returns the new theta_synced WITHOUT the replica axis; the caller overwrites every
replica's local unit with it (`jax.tree.map(lambda x: jnp.broadcast_to(x, (R, *x.shape)), s)`
or a sharded put), since only the caller knows how the replica axis is laid out on the mesh.

Detector design (lingjax's, measured against EDiT's on `tiny`; experiments/edit/RESULTS.md).
EDiT keeps an EWMA mean and variance of a worker's norm over time and flags a norm more than
3 EWMA standard deviations above the mean. Two things break that for replicas trained
together: (a) every replica's norm moves with the run (during the LR warmup the norms grew
~15% a sync while the replicas differed by ~0.5%), so every honest replica stood far above the
EWMA mean, a planted bad replica could not be told apart, and with a short detector warmup all
four were eliminated at every sync, which kept theta_synced and the detector as they were: the
run stopped learning for good; (b) a replica that is bad from the start (random tokens) is
part of what the EWMA learns, its deviation becomes "normal", and it was eliminated once in 30
syncs. So here ONE detector per unit judges each replica against its PEERS at this sync:
  q_r = n_r / median(n)            (what every replica shares, the run's trend, cancels)
  s   = 1.4826 median_r |q_r - 1|  (the sync's robust spread: a minority of outliers does not
                                    move it)
  z_r = (q_r - 1) / spread          spread = EWMA over syncs of s (alpha, EDiT's 0.02)
and eliminates z_r > threshold * max(1, rms of the kept replicas' recent z) once
`detector_warmup` syncs were observed (EDiT's threshold 3, one-sided, with a dynamic factor
that grows when the spread estimate lags). At most half the replicas can stand above the
median, so at most half are ever eliminated. With one replica nothing is compared: only a
non-finite norm eliminates it. The EWMA starts at the first sync's spread and needs ~1/alpha
syncs to settle, which EDiT's 120-sync detector warmup waits for; a short run needs a larger
alpha.

Arrays of the replicas carry a leading replica axis R; everything the maths computes (deltas,
norms, weights, detector statistics) is fp32 whatever the parameter dtype. Keep theta_synced in
fp32: the outer update is applied in its dtype.

Legend: R replicas, W detector window (syncs whose z-scores are kept).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from lingjax.configs import PenaltyConfig

# An eliminated replica's norm is raised by this before the softmax (EDiT's rule); its weight is
# then also set to exactly 0, so a large temperature cannot revive it.
_ELIMINATED_PENALTY = 1e6
_CLIP_EPS = 1e-6


# ----------------------------------------------------------------------------- detector


# 1.4826 * MAD estimates a normal distribution's standard deviation.
_MAD_TO_STD = 1.4826
_SPREAD_FLOOR = 1e-6  # relative norms closer than this are one value (identical replicas)


@flax.struct.dataclass
class Detector:
    """EWMA z-score detector of one unit's replicas (a pytree: checkpoint it).

    spread     fp32 []   EWMA of each sync's robust spread of the relative norms
    count      int32 []  syncs observed
    recent_z   fp32 [W]  ring buffer: each sync's mean squared z-score of the kept replicas
    z_count    int32 []  entries of recent_z filled (<= W)
    z_next     int32 []  slot the next entry is written to
    """

    spread: jax.Array
    count: jax.Array
    recent_z: jax.Array
    z_count: jax.Array
    z_next: jax.Array


def detector_init(window: int) -> Detector:
    """A detector that has seen nothing; `window` = W, EDiT uses W = warmup (120)."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(
            f"detector_init: window={window!r} must be an integer >= 1; pass "
            "max(cfg.detector_warmup, 1) (EDiT keeps the z-scores of the last `warmup` syncs)"
        )
    f, i = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
    return Detector(f, i, jnp.zeros((window,), jnp.float32), i, i)


def relative_norms(norms: jax.Array) -> jax.Array:
    """Each replica's norm over the median of the finite ones at this sync, fp32 [R] (module
    docstring). All 1 when the median is 0 (nobody moved); non-finite norms stay non-finite."""
    norms = norms.astype(jnp.float32)
    finite = jnp.isfinite(norms)
    ref = jnp.nanmedian(jnp.where(finite, norms, jnp.nan))
    ok = jnp.isfinite(ref) & (ref > 0)
    return jnp.where(ok, norms / jnp.where(ok, ref, 1.0), jnp.where(finite, 1.0, norms))


def sync_spread(rel: jax.Array) -> jax.Array:
    """The robust spread of one sync's relative norms `rel` [R]: 1.4826 median |rel - 1| over
    the finite entries (a minority of outliers does not move it), fp32 []."""
    dev = jnp.abs(rel - 1.0)
    return _MAD_TO_STD * jnp.nanmedian(jnp.where(jnp.isfinite(rel), dev, jnp.nan))


def _z(det: Detector, rel: jax.Array) -> jax.Array:
    # No spread exists before the first observation: z is 0 there.
    scale = jnp.maximum(det.spread, _SPREAD_FLOOR)
    return jnp.where(det.count >= 1, (rel - 1.0) / scale, 0.0)


def _threshold(det: Detector, cfg: PenaltyConfig) -> jax.Array:
    """threshold * max(1, rms(recent z)), the root mean square of the kept replicas' z-scores
    over the last W syncs (fp32 []): 1 when the spread estimate is calibrated, more when the
    EWMA lags a growing spread."""
    valid = jnp.arange(det.recent_z.shape[0]) < det.z_count
    k = jnp.maximum(det.z_count, 1).astype(jnp.float32)
    rms = jnp.sqrt(jnp.where(valid, det.recent_z, 0.0).sum() / k)
    return cfg.detector_threshold * jnp.maximum(1.0, rms)


def detector_judge(
    det: Detector, norms: jax.Array, cfg: PenaltyConfig
) -> tuple[jax.Array, jax.Array]:
    """Which replicas are outliers: `norms` fp32 [R] -> (outlier bool [R], z fp32 [R]).

    z_r = (norm_r / median(norms) - 1) / spread, spread the detector's EWMA of the syncs'
    robust spreads. One-sided: only z > threshold * max(1, rms(recent z)) counts, and only once
    the detector has observed `cfg.detector_warmup` syncs (z is still reported during warmup).
    A non-finite norm is always an outlier: its delta would turn the merged params into NaN.
    With one replica nothing is compared: only a non-finite norm is an outlier."""
    norms = norms.astype(jnp.float32)
    finite = jnp.isfinite(norms)
    z = _z(det, relative_norms(norms))
    if norms.shape[0] == 1:
        return ~finite, jnp.zeros_like(norms)
    flagged = finite & (det.count >= cfg.detector_warmup) & (z > _threshold(det, cfg))
    return ~finite | flagged, z


def detector_update(
    det: Detector, norms: jax.Array, cfg: PenaltyConfig, mask: jax.Array | None = None
) -> Detector:
    """The detector after one sync with replica norms `norms` [R]; `mask` False = eliminated.

    spread <- s (first sync), else (1 - alpha) spread + alpha s, with s = sync_spread of the
    relative norms of every finite replica (robust: an outlier among them does not move it);
    once the detector is warm (`detector_warmup` syncs observed, and at least one), the mean
    squared z-score of the kept replicas against the state before the update goes into
    `recent_z` (earlier ones would poison the threshold: the replicas of the first syncs are
    nearly identical, their spread ~0, so the next z-scores run to 1e6). Without two finite
    norms nothing is observed."""
    norms = jnp.atleast_1d(jnp.asarray(norms, jnp.float32))
    rel = relative_norms(norms)
    finite = jnp.isfinite(rel)
    kept = finite if mask is None else finite & mask
    s = sync_spread(rel)
    W = det.recent_z.shape[0]
    push = (det.count >= max(cfg.detector_warmup, 1)) & kept.any()
    z = _z(det, rel)
    ms_z = jnp.where(kept, z * z, 0.0).sum() / jnp.maximum(kept.sum(), 1)
    a = cfg.detector_alpha
    new = Detector(
        spread=jnp.where(det.count == 0, s, (1.0 - a) * det.spread + a * s),
        count=det.count + 1,
        recent_z=jnp.where(push, det.recent_z.at[det.z_next].set(ms_z), det.recent_z),
        z_count=jnp.where(push, jnp.minimum(det.z_count + 1, W), det.z_count),
        z_next=jnp.where(push, (det.z_next + 1) % W, det.z_next),
    )
    return _select(finite.sum() >= 2, new, det)


# ----------------------------------------------------------------------------- merge


def outer_optimizer(cfg: PenaltyConfig) -> optax.GradientTransformation | None:
    """The outer optimiser (its gradient is the merged delta); None for "average". Initialise its
    state with `outer_optimizer(cfg).init(theta_synced)`."""
    if cfg.outer == "average":
        return None
    return optax.sgd(learning_rate=cfg.outer_lr, momentum=cfg.outer_momentum, nesterov=True)


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _deltas(theta_synced: Any, theta_local: Any) -> Any:
    """delta_r = theta_synced - theta_local_r per leaf, fp32 [R, ...]."""
    s_leaves, s_def = jax.tree.flatten(theta_synced)
    l_leaves, l_def = jax.tree.flatten(theta_local)
    if s_def != l_def:
        raise ValueError(
            "theta_local must have the tree structure of theta_synced (plus a leading replica "
            f"axis on every leaf); got {l_def} vs {s_def}"
        )
    if not s_leaves:
        raise ValueError("the sync unit has no arrays; pass a non-empty parameter subtree")
    R = l_leaves[0].shape[0] if l_leaves[0].ndim else None
    for s, loc in zip(s_leaves, l_leaves, strict=True):
        if R is None or loc.shape != (R, *s.shape):
            raise ValueError(
                f"a theta_local leaf has shape {loc.shape}; expected (R, *synced shape) = "
                f"({R}, *{s.shape}): stack the replicas' local params on a leading axis"
            )
    f32 = jnp.float32
    return jax.tree.map(lambda s, x: s.astype(f32)[None] - x.astype(f32), theta_synced, theta_local)


def _unit_norm(tree: Any, batch_dims: int = 0) -> jax.Array:
    """L2 norm over every leaf of the unit (fp32), keeping the first `batch_dims` axes."""
    sq = [
        jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(batch_dims, x.ndim)))
        for x in jax.tree.leaves(tree)
    ]
    return jnp.sqrt(sum(sq))


def pseudo_gradient_norms(theta_synced: Any, theta_local: Any) -> jax.Array:
    """Full-unit L2 norm of each replica's pseudo-gradient: fp32 [R] (leaves [...], [R, ...])."""
    return _unit_norm(_deltas(theta_synced, theta_local), batch_dims=1)


def sync_weights(
    norms: jax.Array,
    eliminated: jax.Array,
    cfg: PenaltyConfig,
    steps: jax.Array | None = None,
) -> jax.Array:
    """Merge weights fp32 [R], summing to 1 (all 0 when every replica is eliminated).

    w = softmax(-n / T) with an eliminated replica's norm raised by 1e6 and its weight set to 0.
    With `cfg.step_weight` = r > 0 (A-EDiT), `steps` (int [R], local steps since the last sync)
    is required and w = (1 - r) w + r steps / sum(steps), both shares over the kept replicas
    only, so the mix ratio r holds among them. `steps` is ignored when r = 0."""
    n = norms.astype(jnp.float32)
    # A non-finite norm is always eliminated; zero it so its penalised logit stays finite.
    n = jnp.where(jnp.isfinite(n), n, 0.0)
    # The penalty keeps the softmax's max-subtraction on a kept replica (a zeroed NaN norm would
    # otherwise be the max logit and could underflow every kept weight).
    n = jnp.where(eliminated, n + _ELIMINATED_PENALTY, n)
    w = jnp.where(eliminated, 0.0, jax.nn.softmax(-n / cfg.temperature))
    if cfg.step_weight > 0:
        if steps is None:
            raise ValueError(
                f"PenaltyConfig.step_weight={cfg.step_weight} needs the replicas' local step "
                "counts: pass steps (int [R]), or set step_weight=0"
            )
        s = jnp.where(eliminated, 0.0, steps.astype(jnp.float32))
        s = s / jnp.maximum(s.sum(), 1e-30)
        w = (1.0 - cfg.step_weight) * w + cfg.step_weight * s
    total = w.sum()
    return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)


def _clip_scale(norm: jax.Array, clip: float) -> jax.Array:
    return jnp.minimum(1.0, clip / (norm + _CLIP_EPS))


def clip_by_unit_norm(tree: Any, clip: float) -> Any:
    """tree * min(1, clip / (||tree|| + 1e-6)), the norm over every leaf (fp32); `clip` is a
    Python float, <= 0 returns `tree` unchanged. Leaves keep their dtypes."""
    if clip <= 0:
        return tree
    scale = _clip_scale(_unit_norm(tree), clip)
    return jax.tree.map(lambda x: (x * scale).astype(x.dtype), tree)


def sync_unit(
    theta_synced: Any,
    theta_local: Any,
    det: Detector,
    opt_state: Any,
    cfg: PenaltyConfig,
    steps: jax.Array | None = None,
) -> tuple[Any, Detector, Any, dict[str, jax.Array]]:
    """One EDiT sync of one unit -> (new_synced, new_det, new_opt_state, info).

    theta_synced  leaves [...]      the unit after the last sync (no replica axis)
    theta_local   leaves [R, ...]   the replicas' local units now
    det           the unit's Detector; opt_state: `outer_optimizer(cfg).init(theta_synced)`,
                  None for "average"; steps: int [R] local steps (A-EDiT, cfg.step_weight > 0)
    new_synced has no replica axis: the caller broadcasts it to every replica (module docstring).

    Every kept replica's norm judged -> the detector observes the kept replicas' norms ->
    weights -> merged delta -> clip -> outer step. If every replica is eliminated, nothing
    trustworthy is left to merge: theta_synced, the outer state and the detector are kept.
    info (fp32 unless noted): norms [R], eliminated bool [R], weights [R], z [R], threshold [],
    delta_norm [] (merged, before clipping), clipped_norm [] (after)."""
    cfg.validate()
    tx = outer_optimizer(cfg)
    if tx is not None and opt_state is None:
        raise ValueError(
            'PenaltyConfig.outer="nesterov" needs the outer state: pass '
            "opt_state=outer_optimizer(cfg).init(theta_synced)"
        )
    deltas = _deltas(theta_synced, theta_local)
    norms = _unit_norm(deltas, batch_dims=1)
    eliminated, z = detector_judge(det, norms, cfg)
    kept = ~eliminated
    any_kept = kept.any()

    new_det = detector_update(det, norms, cfg, mask=kept)

    w = sync_weights(norms, eliminated, cfg, steps)

    def merge(d):
        # where, not a multiply: an eliminated delta may hold NaN, and 0 * NaN = NaN.
        d = jnp.where(kept.reshape((-1,) + (1,) * (d.ndim - 1)), d, 0.0)
        return jnp.tensordot(w, d, axes=1)

    delta = jax.tree.map(merge, deltas)
    delta_norm = _unit_norm(delta)
    scale = _clip_scale(delta_norm, cfg.clip) if cfg.clip > 0 else jnp.ones((), jnp.float32)
    delta = jax.tree.map(lambda d, s: (d * scale).astype(s.dtype), delta, theta_synced)

    if tx is None:
        new_synced = jax.tree.map(lambda s, d: s - d, theta_synced, delta)
        new_opt_state = opt_state
    else:
        updates, new_opt_state = tx.update(delta, opt_state, theta_synced)
        new_synced = optax.apply_updates(theta_synced, updates)
    new_synced = _select(any_kept, new_synced, theta_synced)
    new_opt_state = _select(any_kept, new_opt_state, opt_state)

    info = {
        "norms": norms,
        "eliminated": eliminated,
        "weights": w,
        "z": z,
        "threshold": _threshold(det, cfg),
        "delta_norm": delta_norm,
        "clipped_norm": delta_norm * scale,
    }
    return new_synced, new_det, new_opt_state, info
