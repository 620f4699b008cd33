"""The memory planner: per-device bytes of ling-lite and ling-mini-2.0 on stated meshes against
a hand count of every tensor and how the rules split it; the CLI's JSON, table and errors."""

import json
import os
import subprocess
import sys

import pytest

import lingjax
from lingjax import configs
from lingjax.checkpoint.run import retained_steps
from lingjax.train.memory import plan_memory

GiB = 2**30
FP32 = 4


def hand_params(name: str, fsdp: int, expert: int, tensor: int) -> int:
    """Parameter elements one device holds, tensor by tensor (rules: embed -> fsdp, vocab /
    heads / mlp / expert_mlp -> tensor, expert -> expert; qkv heads, head_dim, layers whole)."""
    m = configs.get(name).model
    D, V, K = m.hidden_size, m.vocab_size, m.attention.head_dim
    H, KV = m.attention.num_heads, m.attention.num_kv_heads
    E, F, S = m.moe.num_experts, m.moe.expert_dim, m.moe.shared_width
    f, e, t = fsdp, expert, tensor
    attn = D * (H + 2 * KV) * K // f + H * K * D // (t * f)  # qkv (whole over tensor), out
    if m.attention.use_qk_norm:
        attn += 2 * K  # q_norm, k_norm scales over head_dim: not split
    norms = 2 * D // f  # input_norm, post_attention_norm
    moe = D * E // f  # router kernel [D, E]
    moe += 3 * E * D * F // (e * f * t)  # w_gate_up [E, D, 2, F], w_down [E, F, D]
    moe += 3 * D * S // (f * t)  # shared expert gate, up, down
    dense = 3 * D * m.dense_dim // (f * t)
    moe_layer, dense_layer = attn + norms + moe, attn + norms + dense
    total = 2 * V * D // (t * f) + D // f  # embed, lm_head, final_norm
    total += m.first_k_dense * dense_layer + m.num_moe_layers * moe_layer
    # MTP: enorm, hnorm, eh_proj [2D, D] (split on its output embed), a MoE block, final_norm
    total += m.num_mtp_layers * (3 * D // f + 2 * D * D // f + moe_layer)
    return total


def hand_buffers(name: str, expert: int) -> int:
    m = configs.get(name).model
    if not m.moe.use_expert_bias:
        return 0
    return (m.num_moe_layers + m.num_mtp_layers) * m.moe.num_experts // expert  # fp32 bias


# (config, devices, mesh overrides, batch of one row per data*fsdp*expert device group): each
# model on two meshes.
CASES = [
    ("ling-lite", 64, {"mesh.data": 2, "mesh.fsdp": 4, "mesh.expert": 8}, 64),
    ("ling-lite", 16, {"mesh.data": 1, "mesh.fsdp": 2, "mesh.expert": 2, "mesh.tensor": 4}, 4),
    ("ling-mini-2.0", 64, {"mesh.data": 8, "mesh.expert": 8}, 64),
    ("ling-mini-2.0", 32, {"mesh.data": 1, "mesh.fsdp": 4, "mesh.expert": 4, "mesh.tensor": 2}, 16),
]


@pytest.mark.parametrize("name,devices,mesh,batch", CASES, ids=lambda c: str(c))
def test_param_optimizer_and_gradient_bytes_match_a_hand_count(name, devices, mesh, batch):
    cfg = configs.get(name, **mesh, **{"train.batch_size": batch})
    plan = plan_memory(cfg, devices, 80 * GiB)
    f, e, t = (plan["mesh"][ax] for ax in ("fsdp", "expert", "tensor"))
    params = hand_params(name, f, e, t) * FP32
    assert plan["bytes"]["params"] == params + hand_buffers(name, e) * FP32
    assert plan["bytes"]["gradients"] == params  # the bias buffer gets no gradient
    # AdamW mu and nu like the params, plus 4 replicated scalars: the two step counts, the
    # injected learning rate and eps_root.
    assert plan["bytes"]["optimizer"] == 2 * params + 4 * 4
    assert plan["rows_per_device"] == 1 and plan["seq_len"] == 4096
    b = plan["bytes"]
    assert b["total"] == b["params"] + b["optimizer"] + b["gradients"] + b["activations"]


def test_local_sgd_adds_theta_synced_and_the_outer_momentum():
    base = {"mesh.data": 4, "mesh.expert": 8, "train.batch_size": 32}
    sync = plan_memory(configs.get("ling-mini-2.0", **base), 32)
    local = {**base, "train.local_sgd.enabled": True}
    for outer, copies in (("nesterov", 2), ("average", 1)):
        cfg = configs.get("ling-mini-2.0", **local, **{"train.local_sgd.outer": outer})
        plan = plan_memory(cfg, 32)
        b = plan["bytes"]
        params = sync["bytes"]["gradients"]  # fp32 params per device, no buffers
        assert b["local_sgd"] == copies * params  # theta_synced (+ momentum), split alike
        for key in ("params", "optimizer", "gradients", "activations"):
            assert b[key] == sync["bytes"][key]  # a replica costs what a synchronous run does
        assert b["total"] == sync["bytes"]["total"] + copies * params
        n = lingjax.count_params(cfg.model)
        whole = (n["total"] + n["mtp"] - hand_buffers("ling-mini-2.0", 1)) * FP32
        want = 4 * sync["disk"]["checkpoint_bytes"] + copies * whole  # every replica's state
        assert plan["disk"]["checkpoint_bytes"] == want


def test_one_device_holds_everything():
    cfg = configs.get("ling-mini-2.0", **{"mesh.data": 1, "train.batch_size": 1})
    n = lingjax.count_params(cfg.model)
    plan = plan_memory(cfg, 1)
    assert plan["bytes"]["params"] == (n["total"] + n["mtp"]) * FP32  # bias buffers included
    assert plan["fits"] is None  # no device memory given, no verdict


def test_activation_estimate_by_hand():
    # ling-lite on 64 devices (data 2, fsdp 4, expert 8): 1 row of 4096 tokens per device,
    # bf16 activations, remat "full", 28 layers; ep 8 > K 6 so "auto" is the ragged all-to-all
    # on GPU, whose receive buffer holds ep * T * min(K, E/ep) = 8 * 4096 * 6 rows.
    cfg = configs.get("ling-lite", **CASES[0][2], **{"train.batch_size": 64})
    plan = plan_memory(cfg, 64, 80 * GiB)
    T, D, a = 4096, 2048, 2
    rows = T * 6 + 8 * T * 6
    attention = T * 24 * 128 * a + 16 * T * T * (4 + a)
    moe = rows * D * (a + 4) + 3 * rows * 1408 * a + 3 * T * 2816 * a
    assert plan["activations"] == {
        "layer_inputs": 28 * T * D * a,
        "layer_working_set": attention + moe,
        "logits": 2 * T * 126464 * 4,
    }
    assert plan["bytes"]["activations"] == 10_905_190_400
    assert plan["bytes"]["total"] == 23_855_570_960 and plan["fits"]  # 22.2 GiB of 80
    # A flash kernel keeps no [L, L] scores; cuDNN's dense document mask is one byte a pair.
    for impl, scores in (("pallas", 0), ("cudnn", T * T)):
        flash = configs.get(
            "ling-lite", **CASES[0][2], **{"train.batch_size": 64, "model.attention.impl": impl}
        )
        working = plan_memory(flash, 64, 80 * GiB)["activations"]["layer_working_set"]
        assert working == attention - 16 * T * T * (4 + a) + scores + moe


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "lingjax.cli.plan", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_json_and_table():
    name, devices, mesh, batch = CASES[2]
    args = [f"--config={name}", *(f"--config.{k}={v}" for k, v in mesh.items())]
    args += [f"--config.train.batch_size={batch}", f"--devices={devices}"]
    r = _cli(*args, "--device_memory=16GiB", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    cfg = configs.get(name, **mesh, **{"train.batch_size": batch})
    assert out == json.loads(json.dumps(plan_memory(cfg, devices, 16 * GiB)))
    assert out["fits"] is False  # 11 GiB of weights and 22 of AdamW state
    r = _cli(*args, "--device_memory=80GB")
    assert r.returncode == 0, r.stderr
    assert "params" in r.stdout and "activations" in r.stdout and "fits" in r.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config=ling-lite", "--devices=64", "--config.mesh.expert=6"], "does not divide"),
        (["--config=ling-lite", "--devices=8", "--device_memory=lots"], "--device_memory"),
    ],
)
def test_cli_bad_input_is_one_line(args, needle):
    r = _cli(*args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_model_that_does_not_split_is_refused():
    cfg = configs.get("ling-lite", **{"mesh.data": 6, "mesh.tensor": 8, "train.batch_size": 6})
    with pytest.raises(configs.ConfigError, match=r"num_kv_heads=4 is not divisible"):
        plan_memory(cfg, 48)


def test_disk_of_the_retention_by_hand():
    # 10000 steps, a full state every 1000 (the newest 3 kept, plus every 5000-th for merging)
    # and a params copy every 250 (the newest 30 kept).
    retention = {
        "checkpoint.every_steps": 1000,
        "checkpoint.keep": 3,
        "checkpoint.keep_every_steps": 5000,
        "checkpoint.params_every_steps": 250,
        "checkpoint.params_keep": 30,
    }
    one = {"mesh.data": 1, "train.batch_size": 1, "train.steps": 10000}
    cfg = configs.get("ling-mini-2.0", **one, **retention)
    full, copies = retained_steps(cfg.checkpoint, 10000)
    assert full == [5000, 8000, 9000, 10000]
    assert copies == list(range(2750, 10001, 250)) and len(copies) == 30
    n = lingjax.count_params(cfg.model)
    params = (n["total"] + n["mtp"]) * FP32  # fp32 master weights and the bias buffers
    disk = plan_memory(cfg, 1)["disk"]
    assert disk["params_copy_bytes"] == params
    # AdamW mu and nu (like the params less the bias buffers), the RNG key and step scalars.
    bias = hand_buffers("ling-mini-2.0", 1) * FP32
    assert 3 * params - 2 * bias < disk["checkpoint_bytes"] < 3 * params - 2 * bias + 1024
    assert disk["total_bytes"] == 4 * disk["checkpoint_bytes"] + 30 * params
    # No keep_every_steps, no copies: the newest `keep` saves and the last step.
    assert retained_steps(configs.CheckpointConfig(every_steps=300, keep=2), 1000) == (
        [900, 1000],
        [],
    )
