"""EDiT local-SGD synchronisation (docs/ling_spec.md §3.5; arXiv 2412.07210): the pure, jittable
maths of one sync of one sync unit.

R replicas each train with their own data and inner optimiser; every tau steps each sync unit
(one top-level parameter subtree, e.g. one decoder layer) is merged on its own:
  1. pseudo-gradients  delta_r = theta_synced - theta_local_r  and their full-unit L2 norms n_r;
  2. anomaly elimination: a replica whose relative norm n_r / median_r(n) is an outlier for
     the unit's EWMA z-score detector (`Detector`) is dropped from this sync;
  3. weighted averaging: w = softmax(-n / T) over the kept replicas (A-EDiT: optionally mixed
     with the replicas' local step counts), delta = sum_r w_r delta_r;
  4. clipping of delta by its full-unit norm;
  5. the outer update of theta_synced with gradient delta (Nesterov SGD), or theta_synced -=
     delta ("average").
`sync_unit` returns the new theta_synced WITHOUT the replica axis; the caller overwrites every
replica's local unit with it (`jax.tree.map(lambda x: jnp.broadcast_to(x, (R, *x.shape)), s)`
or a sharded put), since only the caller knows how the replica axis is laid out on the mesh.

Detector design: ONE detector per unit observes the RELATIVE norms n_r / median(n) of all kept
replicas, and every replica's is judged against it. Relative, not EDiT's raw norms: every
replica's norm moves with the run (LR warmup and decay, the loss falling), and measured on
`tiny` during the LR warmup the norms grew ~15% a sync while the replicas differed by ~0.5%,
so the raw-norm detector flagged EVERY honest replica and could not tell a planted bad one
from them; the ratio to the sync's median cancels what all replicas share and keeps what
sets one apart. With one replica there is nothing to compare with: its raw norm is judged.
One detector for all replicas, not one each: a replica that is anomalous from its first sync
(corrupted data, a bad host) thus still stands out against the others; a per-replica detector
would learn its bad norm as normal. Each sync is one EWMA step of the replicas' pooled
distribution: the mean moves towards the kept replicas' mean and the variance takes in their
mean squared deviation from the old mean, so the detector learns the spread of a SINGLE
replica's value (what it judges), not the ~sqrt(R) narrower spread of their mean (an earlier
draft observed only the mean, and random +-5% norms then reached z 2-4). With one replica, or
a scalar observation, this is EDiT's EWMA exactly. The EWMA variance starts near 0 and takes
~1/alpha syncs to settle (50 at EDiT's alpha 0.02), which is what EDiT's 120-sync detector
warmup waits for: a short warmup needs a larger alpha.

At most half of the replicas can be eliminated by their z-scores (lingjax's guard, not in
EDiT): when more stand out, the run changed, not a replica. Without it, the raw-norm detector
above eliminated all four replicas of a `tiny` run at every sync from its third on: theta_synced
and the detector then stay as they were, so the next sync flags them all again and the run
stops learning for good.

Arrays of the replicas carry a leading replica axis R; everything the maths computes (deltas,
norms, weights, detector statistics) is fp32 whatever the parameter dtype. Keep theta_synced in
fp32: the outer update is applied in its dtype.

Legend: R replicas, W detector window (recent z-scores kept).
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


@flax.struct.dataclass
class Detector:
    """EWMA z-score detector of one unit's pseudo-gradient norms (a pytree: checkpoint it).

    mean, m2   fp32 []   EWMA mean and variance of the observed replicas' norms
    count      int32 []  syncs observed
    recent_z   fp32 [W]  ring buffer of the z-scores of the last W observations
    z_count    int32 []  entries of recent_z filled (<= W)
    z_next     int32 []  slot the next z-score is written to
    """

    mean: jax.Array
    m2: jax.Array
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
    return Detector(f, f, i, jnp.zeros((window,), jnp.float32), i, i)


def _z(det: Detector, x: jax.Array) -> jax.Array:
    # No spread exists before two observations (m2 = 0 after the first): z is 0 there, else a
    # single early z would be astronomically large. The relative floor keeps z finite for a flat
    # history (a frozen unit has every norm 0).
    std = jnp.maximum(jnp.sqrt(det.m2), 1e-6 * jnp.abs(det.mean) + 1e-30)
    return jnp.where(det.count >= 2, (x - det.mean) / std, 0.0)


def _threshold(det: Detector, cfg: PenaltyConfig) -> jax.Array:
    """threshold * max(1, std(recent z)), the population std over the filled entries (fp32 [])."""
    valid = jnp.arange(det.recent_z.shape[0]) < det.z_count
    k = jnp.maximum(det.z_count, 1).astype(jnp.float32)
    m = jnp.where(valid, det.recent_z, 0.0).sum() / k
    std = jnp.sqrt(jnp.where(valid, (det.recent_z - m) ** 2, 0.0).sum() / k)
    return cfg.detector_threshold * jnp.maximum(1.0, std)


def relative_norms(norms: jax.Array) -> jax.Array:
    """What the detector judges: each replica's norm over the median of the finite ones at
    this sync, fp32 [R] (module docstring); the norms themselves for one replica. Non-finite
    norms stay non-finite."""
    norms = norms.astype(jnp.float32)
    if norms.shape[0] == 1:
        return norms
    finite = jnp.isfinite(norms)
    ref = jnp.nanmedian(jnp.where(finite, norms, jnp.nan))
    ok = jnp.isfinite(ref) & (ref > 0)
    return jnp.where(ok, norms / jnp.where(ok, ref, 1.0), jnp.where(finite, 1.0, norms))


def detector_judge(
    det: Detector, norms: jax.Array, cfg: PenaltyConfig
) -> tuple[jax.Array, jax.Array]:
    """Which replicas are outliers: `norms` fp32 [R] -> (outlier bool [R], z fp32 [R]).

    One-sided: only z > threshold * max(1, std(recent z)) counts, and only once the detector
    has observed `cfg.detector_warmup` syncs (z is still reported during warmup). At most half
    of the replicas with finite norms are outliers: when more stand out, every replica moved
    (module docstring), and none is. A non-finite norm is always an outlier: its delta would
    turn the merged params into NaN."""
    norms = norms.astype(jnp.float32)
    z = _z(det, norms)
    finite = jnp.isfinite(norms)
    flagged = finite & (det.count >= cfg.detector_warmup) & (z > _threshold(det, cfg))
    minority = 2 * flagged.sum() <= finite.sum()
    return ~finite | (flagged & minority), z


def detector_update(
    det: Detector, x: jax.Array, cfg: PenaltyConfig, mask: jax.Array | None = None
) -> Detector:
    """The detector after one sync's observation `x`: fp32 [] (one norm) or [R] (the replicas'
    norms, those with `mask` False left out; module docstring).

    With mean_r over the observed entries: the mean z-score of x against the state before the
    update goes into `recent_z` (from the third sync on, when a spread exists), then
    d_r = x_r - mean; mean += alpha mean_r(d_r); m2 = (1 - alpha)(m2 + alpha mean_r(d_r^2)).
    The first sync sets mean = mean_r(x_r), m2 = mean_r((x_r - mean)^2) (0 for one norm).
    Non-finite entries are left out; with none left the state is returned unchanged."""
    x = jnp.atleast_1d(jnp.asarray(x, jnp.float32))
    ok = jnp.isfinite(x) if mask is None else jnp.isfinite(x) & mask
    k = jnp.maximum(ok.sum(), 1).astype(jnp.float32)

    def avg(v: jax.Array) -> jax.Array:
        return jnp.where(ok, v, 0.0).sum() / k

    W = det.recent_z.shape[0]
    push = det.count >= 2
    first = det.count == 0
    xm, a = avg(x), cfg.detector_alpha
    d = x - det.mean
    new = Detector(
        mean=jnp.where(first, xm, det.mean + a * avg(d)),
        m2=jnp.where(first, avg((x - xm) ** 2), (1.0 - a) * (det.m2 + a * avg(d * d))),
        count=det.count + 1,
        recent_z=jnp.where(push, det.recent_z.at[det.z_next].set(avg(_z(det, x))), det.recent_z),
        z_count=jnp.where(push, jnp.minimum(det.z_count + 1, W), det.z_count),
        z_next=jnp.where(push, (det.z_next + 1) % W, det.z_next),
    )
    return _select(ok.any(), new, det)


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
    judged = relative_norms(norms)
    eliminated, z = detector_judge(det, judged, cfg)
    kept = ~eliminated
    any_kept = kept.any()

    new_det = detector_update(det, judged, cfg, mask=kept)

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
