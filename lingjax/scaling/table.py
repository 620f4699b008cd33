"""The runs table: one row per run of a grid, read from its ordinary training workdir.

Fits and the planner read only this table, so a table from a cluster and one from a laptop are
the same thing. Columns (`COLUMNS`):

- name, status (done | failed | running | pending), budget (the run's nominal FLOPs, 0 = none)
- params_total, params_active, params_active_non_embedding (lingjax.model.count_params: MTP
  heads excluded, embeddings and LM head included in total/active)
- experts, experts_per_tok, shared_experts (0 for a dense model)
- activation_ratio A: active expert parameters / all expert parameters, shared experts counted
  as always-active experts (9/257 for Ling-mini-2.0's 8-of-256 + 1 shared); 1 for dense
- granularity G = 2 x hidden_size / expert_dim (an expert as wide as a dense model's 4x MLP
  would be has G = 0.5; Ling-mini-2.0 has 2048 / 512 x 2 = 8); 0 for dense
- attention_flops, ffn_flops: forward FLOPs per token of the attention layers (projections and
  causal scores) and of the feed-forward layers (dense MLPs, shared and active routed experts);
  expert_attention_ratio r = ffn_flops / attention_flops
- flops_per_token (training, lingjax.model.flops_per_token), tokens D (trained), compute C = D x
  flops_per_token
- lr, batch_size, seq_len, steps
- train_loss: mean ce_loss of the last 10% of logged rows (at least one row): the last row alone
  is one batch and too noisy for a fit at small scale; val_loss: the last held-out loss
- wall_s: seconds the run took (the grid runner's record; else the sum of logged step times)
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from lingjax.configs import Config, ModelConfig, from_dict
from lingjax.model import count_params, flops_per_token

COLUMNS = (
    "name",
    "status",
    "budget",
    "params_total",
    "params_active",
    "params_active_non_embedding",
    "experts",
    "experts_per_tok",
    "shared_experts",
    "activation_ratio",
    "granularity",
    "attention_flops",
    "ffn_flops",
    "expert_attention_ratio",
    "flops_per_token",
    "tokens",
    "compute",
    "lr",
    "batch_size",
    "seq_len",
    "steps",
    "train_loss",
    "val_loss",
    "wall_s",
)
_TEXT = ("name", "status")


def flop_split(model_cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token of attention and of the feed-forward layers (2 per weight of a
    matmul; causal scores and values 2 x 2 x heads x head_dim x seq_len / 2 per layer)."""
    c, a, m = model_cfg, model_cfg.attention, model_cfg.moe
    layers = c.num_layers + c.num_mtp_layers
    qkvo = c.hidden_size * a.head_dim * (2 * a.num_heads + 2 * a.num_kv_heads)
    attention = layers * (2 * qkvo + 2 * a.num_heads * a.head_dim * seq_len)
    moe_layers = c.num_moe_layers + c.num_mtp_layers
    expert = 3 * c.hidden_size * (m.num_experts_per_tok * m.expert_dim + m.shared_width)
    dense = 3 * c.hidden_size * c.dense_dim
    ffn = 2 * (moe_layers * expert + c.first_k_dense * dense)
    return {"attention_flops": float(attention), "ffn_flops": float(ffn)}


def describe(cfg: Config) -> dict[str, Any]:
    """The table's columns that follow from a config alone (sizes, ratios, FLOPs per token)."""
    c, m = cfg.model, cfg.model.moe
    n = count_params(c)
    moe = c.num_moe_layers > 0
    if moe:
        routed = m.num_experts * m.expert_dim
        shared_count = m.num_shared_experts * (m.shared_width // max(m.num_shared_experts, 1))
        ratio = (m.num_experts_per_tok * m.expert_dim + shared_count) / (routed + shared_count)
        granularity = 2 * c.hidden_size / m.expert_dim
    else:
        ratio, granularity = 1.0, 0.0
    split = flop_split(c, cfg.train.seq_len)
    return {
        "params_total": n["total"],
        "params_active": n["active"],
        "params_active_non_embedding": n["active_non_embedding"],
        "experts": m.num_experts if moe else 0,
        "experts_per_tok": m.num_experts_per_tok if moe else 0,
        "shared_experts": m.num_shared_experts if moe else 0,
        "activation_ratio": ratio,
        "granularity": granularity,
        **split,
        "expert_attention_ratio": split["ffn_flops"] / split["attention_flops"],
        "flops_per_token": flops_per_token(c, cfg.train.seq_len),
        "lr": cfg.train.lr,
        "batch_size": cfg.train.batch_size,
        "seq_len": cfg.train.seq_len,
        "steps": cfg.train.steps,
    }


def _metrics(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: the rows before it stand
    return rows


def read_run(workdir: str, name: str, budget: float = 0.0, record: dict | None = None) -> dict:
    """One row of the table from a workdir (`record`: the grid runner's status record)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS, math.nan)
    row.update(name=name, budget=budget, status="pending")
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        if record:
            row["status"] = record.get("status", "pending")
        return row
    with open(path) as f:
        cfg = from_dict(json.load(f)).validate()
    row.update(describe(cfg))
    rows = _metrics(workdir)
    train = [r for r in rows if "ce_loss" in r]
    last = train[-max(1, len(train) // 10) :]
    if last:
        row["train_loss"] = sum(r["ce_loss"] for r in last) / len(last)
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    if val:
        row["val_loss"] = val[-1]
    done_steps = max((r["step"] for r in rows if "step" in r), default=0)
    row["tokens"] = done_steps * cfg.train.batch_size * cfg.train.seq_len
    row["compute"] = row["tokens"] * row["flops_per_token"]
    finished = done_steps >= cfg.train.steps
    status = (record or {}).get("status")
    row["status"] = "done" if finished else (status if status == "failed" else "running")
    wall = (record or {}).get("wall_s")
    if wall is None and train:
        log_every = max(cfg.train.log_every, 1)
        wall = sum(r.get("step_time") or 0.0 for r in train) * log_every  # step 1: None
    row["wall_s"] = wall if wall is not None else math.nan
    return row


def write_table(rows: Sequence[dict[str, Any]], path: str) -> None:
    """CSV (or parquet, when the name ends in .parquet and pandas is installed); written to a
    temporary file and renamed, so a reader never sees half a table."""
    tmp = path + ".tmp"
    if path.endswith(".parquet"):
        try:
            import pandas as pd
        except ImportError:
            raise ValueError(
                f"{path}: parquet needs pandas (pip install pandas); or use .csv"
            ) from None
        pd.DataFrame(list(rows), columns=list(COLUMNS)).to_parquet(tmp, index=False)
    else:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    os.replace(tmp, path)


def read_table(path: str) -> list[dict[str, Any]]:
    """Rows of a table written by `write_table` (numbers as floats, text columns as str)."""
    if not os.path.exists(path):
        raise ValueError(f"runs table {path} does not exist; run the grid (lingjax.cli.grid)")
    if path.endswith(".parquet"):
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("name", "status", "compute") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} is not a runs table: no column {', '.join(missing)}")
        return [_typed(row) for row in reader]


def _typed(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in _TEXT:
            out[k] = v
        else:
            out[k] = float(v) if v not in ("", None) else math.nan
    return out
