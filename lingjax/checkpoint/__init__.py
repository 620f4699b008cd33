"""Checkpoints: Hugging Face Ling import/export (safetensors, streaming) and the lingjax model
checkpoint directory (config.json + an Orbax PyTree checkpoint of the variables).

    cfg, variables = lingjax.load_hf("path/to/Ling-lite")
    lingjax.save_hf(cfg, variables, "path/to/export")
    python -m lingjax.cli.convert --from=hf --hf_dir=path/to/Ling-lite --out=ckpt

Training-run checkpoints (manager.py: async Orbax saves, retention for WSM, validated restores
that fall back past corrupt checkpoints, elastic restore onto any mesh) and the resume-config
check (config_check.py):

    ckpt = Checkpointer(f"{workdir}/checkpoints", cfg.checkpoint)
    restored = lingjax.checkpoint.restore(f"{workdir}/checkpoints", abstract, target_shardings)
"""

from lingjax.checkpoint.config_check import RESUMABLE_KEYS, check_resume_config, config_changes
from lingjax.checkpoint.hf import (
    convert_from_hf,
    convert_to_hf,
    load_checkpoint,
    load_hf,
    parse_size,
    plan_hf,
    save_hf,
)
from lingjax.checkpoint.hf_config import HFCheckpointError, from_hf_config, to_hf_config
from lingjax.checkpoint.manager import (
    Checkpointer,
    CheckpointError,
    Restored,
    default_shardings,
    restore,
    with_shardings,
)

__all__ = [
    "RESUMABLE_KEYS",
    "CheckpointError",
    "Checkpointer",
    "HFCheckpointError",
    "Restored",
    "check_resume_config",
    "config_changes",
    "convert_from_hf",
    "convert_to_hf",
    "default_shardings",
    "from_hf_config",
    "load_checkpoint",
    "load_hf",
    "parse_size",
    "plan_hf",
    "restore",
    "save_hf",
    "to_hf_config",
    "with_shardings",
]
