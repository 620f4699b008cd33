"""Post-training through the one loop, end to end on `tiny` (one layer, CPU): SFT on arithmetic
conversations, entropy-based selection over its checkpoints, DPO from it (the reference's
log-probs cached in the workdir and read, not recomputed, on resume), and C3PO from it (exactly
the budget's tokens every step; a resumed run samples and trains what an uninterrupted one
does)."""

import json
import os

import numpy as np
import pytest

from lingjax import configs
from lingjax.checkpoint import load
from lingjax.posttrain import train
from lingjax.posttrain.selection import checkpoint_entropies, select_by_entropy
from lingjax.train.dpo import REFERENCE_FILE
from lingjax.train.metrics import read_metrics

BASE = {
    "model.num_layers": 1,
    "train.seq_len": 64,
    "train.batch_size": 8,
    "train.log_every": 1,
    "train.schedule_steps": 100,
    "train.routing_warmup_steps": 0,
    "mesh.data": 1,
}
TIMING = {"tokens_per_sec", "mfu", "step_time", "data_wait_frac", "slow_steps", "rollout_seconds"}


def _write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    sums = [(int(a), int(b)) for a, b in rng.integers(0, 50, (64, 2))]
    user = [f"{a}+{b}=" for a, b in sums]
    return {
        "sft": _write(
            d / "sft.jsonl",
            [
                {
                    "messages": [
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": str(a + b)},
                    ]
                }
                for q, (a, b) in zip(user, sums, strict=True)
            ],
        ),
        "dpo": _write(
            d / "dpo.jsonl",
            [
                {"prompt": q, "chosen": str(a + b), "rejected": str(a + b + 1)}
                for q, (a, b) in zip(user, sums, strict=True)
            ][:24],
        ),
        "prompts": _write(
            d / "prompts.jsonl",
            [{"prompt": q, "answer": str(a + b)} for q, (a, b) in zip(user, sums, strict=True)],
        ),
    }


def _cfg(objective, instruct, **extra):
    overrides = {**BASE, "train.objective": objective, "data.instruct": instruct, **extra}
    return configs.get("tiny", **overrides)


def _rows(workdir):
    return read_metrics(os.path.join(workdir, "metrics.jsonl"))


@pytest.fixture(scope="module")
def sft(tmp_path_factory, files):
    workdir = str(tmp_path_factory.mktemp("sft") / "run")
    train(
        _cfg("sft", files["sft"], **{"train.steps": 4, "checkpoint.params_every_steps": 2}), workdir
    )
    return workdir


def test_sft_trains_the_assistants_tokens_and_entropy_selects_a_checkpoint(sft, files):
    rows = _rows(sft)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # The answers (2 digits or so) and EOS are the targets: far fewer than the rows' tokens.
    assert all(0 < r["tokens"] < 0.2 * 8 * 64 for r in rows)
    assert all(np.isfinite(r["loss"]) for r in rows)
    ent = list(checkpoint_entropies(sft, files["sft"], log=lambda _: None))
    assert [r["step"] for r in ent] == [2, 4] and all(r["entropy"] > 0 for r in ent)
    pick = select_by_entropy(ent, band=(0.0, 100.0))
    assert pick["step"] == 4 and pick["in_band"]  # the latest in the band
    far = select_by_entropy(ent, band=(0.0, 0.0))
    assert not far["in_band"] and far["entropy"] == min(r["entropy"] for r in ent)
    _, variables = load(sft, step=2)  # a params-only copy: what RL starts from after a pick
    assert "params" in variables


def test_dpo_caches_the_reference_and_resumes_from_it(sft, files, tmp_path):
    workdir = str(tmp_path / "dpo")
    cfg = _cfg("dpo", files["dpo"], **{"train.steps": 2, "train.init_from": sft})
    train(cfg, workdir)
    cache = os.path.join(workdir, REFERENCE_FILE)
    with np.load(cache) as f:
        ref = f["logps"]
    assert ref.shape == (24, 2) and np.isfinite(ref).all() and (ref < 0).all()
    stamp = os.stat(cache).st_mtime_ns
    train(_cfg("dpo", files["dpo"], **{"train.steps": 3, "train.init_from": sft}), workdir)
    assert os.stat(cache).st_mtime_ns == stamp  # read, not computed again
    rows = _rows(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(0 <= r["reward_accuracy"] <= 1 and r["pairs"] > 0 for r in rows)
    # At step 1 the policy IS the reference: every implicit reward is 0.
    assert abs(rows[0]["chosen_reward"]) < 1e-5 and abs(rows[0]["rejected_reward"]) < 1e-5


C3PO = {
    "train.c3po.budget": 24,
    "train.c3po.samples": 2,
    "train.c3po.prompts": 2,
    "train.c3po.max_new_tokens": 6,
    "train.lr": 1e-4,
}


def test_c3po_trains_exactly_the_budget_and_resumes_exactly(sft, files, tmp_path):
    def cfg(steps):
        return _cfg(
            "c3po", files["prompts"], **{**C3PO, "train.steps": steps, "train.init_from": sft}
        )

    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    train(cfg(3), straight)
    train(cfg(2), resumed)
    train(cfg(3), resumed)
    rows = _rows(straight)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["tokens"] == 24  # Phi, every step
        for key in ("reward", "response_length", "entropy", "kl", "clip_fraction", "policy_loss"):
            assert np.isfinite(r[key]), key
    assert rows[0]["clip_fraction"] == 0.0  # step 1: the rollout policy is the policy
    assert abs(rows[0]["kl"]) < 1e-6  # ... and the reference
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in _rows(resumed)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
