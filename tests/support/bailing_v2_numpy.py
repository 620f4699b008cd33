"""An fp32 numpy port of the forward pass of the published Ling 2.0 modeling code,
`BailingMoeV2ForCausalLM` in inclusionAI/Ling-V2 `models/modeling_bailing_moe_v2.py` (commit
af8837e) with its config class `configuration_bailing_moe_v2.py` and the default RoPE init of
transformers that it calls. Written from reading that code (no torch, no remote code): the
oracle for how a config.json is read where readers (vLLM, mlx-lm, lingjax) differ.

What it does as the published code does, step by step:
  - config: a key missing from config.json takes BailingMoeV2Config's default (`CLASS_DEFAULTS`);
    head_dim = head_dim or hidden_size // num_attention_heads.
  - RoPE: rotates int(head_dim * partial_rotary_factor) channels (1.0 when the key is absent;
    `rotary_dim` is never read), NeoX rotate-half, inv_freq = theta^(-2i/dim).
  - attention: fused query_key_value split as [Q heads | K heads | V heads], QK RMSNorm before
    RoPE when use_qk_norm, GQA, causal softmax with scale 1/sqrt(head_dim).
  - gate: fp32 logits, sigmoid scores (score_function is never read), scores + expert_bias
    (always, zeros when the checkpoint has none) for the selection, group-limited top-k with
    group score = sum of the top 2 (always: n_group from the config), weights = the unbiased
    scores, divided by (sum + 1e-20) only when top_k > 1 (norm_topk_prob is never read), times
    routed_scaling_factor.
  - shared expert: one MLP of width moe_intermediate_size * num_shared_experts.
  - layers i < first_k_dense_replace are dense MLPs of width intermediate_size.
  - MTP: layers num_hidden_layers .. + num_nextn_predict_layers, each: ids rolled left (0 at
    the end), enorm(embed(ids)) and hnorm(h) concatenated -> eh_proj -> attention and MoE
    block -> final_layernorm; the next depth starts from that output.
"""

from __future__ import annotations

import numpy as np

# BailingMoeV2Config.__init__ defaults (the keys the forward reads).
CLASS_DEFAULTS = {
    "vocab_size": 157184,
    "hidden_size": 2048,
    "intermediate_size": 5120,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "use_qkv_bias": False,
    "use_bias": False,
    "rms_norm_eps": 1e-06,
    "rope_theta": 600000.0,
    "num_experts": 256,
    "num_shared_experts": 1,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
    "moe_intermediate_size": 512,
    "first_k_dense_replace": 1,
    "head_dim": 128,
    "use_qk_norm": True,
    "num_nextn_predict_layers": 0,
    "routed_scaling_factor": 1.0,
}


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float32)
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    y = x @ w.T  # torch Linear weights are [out, in]
    return y if b is None else y + b


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row, largest first."""
    return np.argsort(-x, axis=-1, kind="stable")[..., :k]


class BailingMoeV2:
    """The published forward for one config.json dict and its tensors (name -> fp32 array)."""

    def __init__(self, config: dict, tensors: dict[str, np.ndarray]):
        self.c = {**CLASS_DEFAULTS, **config}
        c = self.c
        self.t = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
        self.head_dim = c["head_dim"] or c["hidden_size"] // c["num_attention_heads"]
        factor = config.get("partial_rotary_factor", 1.0)  # hasattr(config, ...) else 1.0
        self.rope_dim = int(self.head_dim * factor)

    # ---------------------------------------------------------------- pieces

    def _rope(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dim = self.rope_dim
        inv_freq = 1.0 / (self.c["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        freqs = positions[:, None].astype(np.float32) * inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)  # [T, dim]
        return np.cos(emb), np.sin(emb)

    @staticmethod
    def _apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        d = cos.shape[-1]
        rot, rest = x[..., :d], x[..., d:]
        half = d // 2
        rotated = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
        return np.concatenate([rot * cos + rotated * sin, rest], axis=-1)

    def _attention(self, p: str, x: np.ndarray, cos, sin) -> np.ndarray:
        c, t = self.c, self.t
        B, T, _ = x.shape
        H, V, K = c["num_attention_heads"], c["num_key_value_heads"], self.head_dim
        qkv = _linear(
            x,
            t[f"{p}.attention.query_key_value.weight"],
            t.get(f"{p}.attention.query_key_value.bias") if c["use_qkv_bias"] else None,
        ).reshape(B, T, H + 2 * V, K)
        q, k, v = qkv[:, :, :H], qkv[:, :, H : H + V], qkv[:, :, H + V :]
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # [B, heads, T, K]
        if c["use_qk_norm"]:
            eps = c["rms_norm_eps"]
            q = _rms_norm(q, t[f"{p}.attention.query_layernorm.weight"], eps)
            k = _rms_norm(k, t[f"{p}.attention.key_layernorm.weight"], eps)
        q, k = self._apply_rope(q, cos, sin), self._apply_rope(k, cos, sin)
        k, v = np.repeat(k, H // V, axis=1), np.repeat(v, H // V, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(K)
        causal = np.tril(np.ones((T, T), bool))
        probs = _softmax(np.where(causal, scores, -np.inf))
        out = (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, H * K)
        return _linear(out, t[f"{p}.attention.dense.weight"], t.get(f"{p}.attention.dense.bias"))

    def _mlp(self, p: str, x: np.ndarray) -> np.ndarray:
        t = self.t
        gate = _linear(x, t[f"{p}.gate_proj.weight"])
        up = _linear(x, t[f"{p}.up_proj.weight"])
        return _linear(_silu(gate) * up, t[f"{p}.down_proj.weight"])

    def route(self, p: str, x_TD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(expert ids [T, k], weights [T, k]) of the gate of layer prefix `p`."""
        c, t = self.c, self.t
        E, k = c["num_experts"], c["num_experts_per_tok"]
        logits = _linear(x_TD, t[f"{p}.mlp.gate.weight"])
        scores = 1.0 / (1.0 + np.exp(-logits))
        bias = t.get(f"{p}.mlp.gate.expert_bias", np.zeros(E, np.float32))
        sel = scores + bias
        n_group, topk_group = c["n_group"], c["topk_group"]
        T = sel.shape[0]
        grouped = sel.reshape(T, n_group, E // n_group)
        group_scores = np.sort(grouped, axis=-1)[..., ::-1][..., :2].sum(-1)
        keep_groups = _topk(group_scores, topk_group)
        group_mask = np.zeros((T, n_group), bool)
        np.put_along_axis(group_mask, keep_groups, True, axis=1)
        expert_mask = np.repeat(group_mask, E // n_group, axis=1)
        ids = _topk(np.where(expert_mask, sel, -np.inf), k)
        w = np.take_along_axis(scores, ids, axis=1)
        if k > 1:
            w = w / (w.sum(-1, keepdims=True) + 1e-20)
        return ids, w * c["routed_scaling_factor"]

    def _moe(self, p: str, x: np.ndarray) -> np.ndarray:
        c = self.c
        B, T, D = x.shape
        x_TD = x.reshape(B * T, D)
        ids, w = self.route(p, x_TD)
        y = np.zeros_like(x_TD)
        for slot in range(ids.shape[1]):
            for e in np.unique(ids[:, slot]):
                rows = ids[:, slot] == e
                y[rows] += w[rows, slot, None] * self._mlp(f"{p}.mlp.experts.{e}", x_TD[rows])
        y = y.reshape(B, T, D)
        if c["num_shared_experts"] is not None:
            y = y + self._mlp(f"{p}.mlp.shared_experts", x)
        return y

    def _block(self, p: str, x: np.ndarray, cos, sin, moe: bool) -> np.ndarray:
        eps, t = self.c["rms_norm_eps"], self.t
        x = x + self._attention(p, _rms_norm(x, t[f"{p}.input_layernorm.weight"], eps), cos, sin)
        h = _rms_norm(x, t[f"{p}.post_attention_layernorm.weight"], eps)
        return x + (self._moe(p, h) if moe else self._mlp(f"{p}.mlp", h))

    # ---------------------------------------------------------------- forward

    def __call__(self, input_ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(logits [B, T, V], MTP logits: one [B, T, V] per MTP depth)."""
        c, t = self.c, self.t
        eps, L = c["rms_norm_eps"], c["num_hidden_layers"]
        ids = np.asarray(input_ids)
        cos, sin = self._rope(np.arange(ids.shape[1]))
        embed = t["model.word_embeddings.weight"]
        x = embed[ids]
        for i in range(L):
            x = self._block(f"model.layers.{i}", x, cos, sin, moe=i >= c["first_k_dense_replace"])
        h = _rms_norm(x, t["model.norm.weight"], eps)
        lm_head = t["lm_head.weight"]
        mtp = []
        for d in range(c["num_nextn_predict_layers"]):
            p = f"model.layers.{L + d}"
            ids = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)
            e = _rms_norm(embed[ids], t[f"{p}.enorm.weight"], eps)
            hh = _rms_norm(h, t[f"{p}.hnorm.weight"], eps)
            y = _linear(np.concatenate([e, hh], axis=-1), t[f"{p}.eh_proj.weight"])
            y = self._block(p, y, cos, sin, moe=True)
            h = _rms_norm(y, t[f"{p}.final_layernorm.weight"], eps)
            mtp.append(_linear(h, lm_head))
        # (the main logits come from the main hidden states, taken before the MTP loop)
        return _linear(_rms_norm(x, t["model.norm.weight"], eps), lm_head), mtp
