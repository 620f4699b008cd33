"""Print a config's parameter counts and training FLOPs per token (nothing is allocated).

python -m lingjax.cli.info --config=ling-mini-2.0 [--json]
"""

from __future__ import annotations

import json

from absl import flags

from lingjax.cli import common

common.define_config_flag("tiny")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


def info(cfg) -> dict:
    from lingjax.model import count_params, flops_per_token

    counts = count_params(cfg.model)
    return {
        "config": cfg.name,
        **counts,
        "seq_len": cfg.train.seq_len,
        "train_flops_per_token": flops_per_token(cfg.model, cfg.train.seq_len),
    }


def main(argv: list[str]) -> None:
    del argv
    cfg = common.resolved_config()
    out = info(cfg)
    if common.FLAGS.json:
        print(json.dumps(out))
        return
    print(f"config                 {out['config']}")
    for key in ("total", "active", "non_embedding", "active_non_embedding", "mtp"):
        v = out[key]
        print(f"{key + ' params':<23}{v:>18,}  ({v / 1e9:.3f}B)")
    print(
        f"train FLOPs per token  {out['train_flops_per_token']:>18,.0f}  "
        f"(seq_len {out['seq_len']}, fwd+bwd, causal attention)"
    )


if __name__ == "__main__":
    common.run(main)
