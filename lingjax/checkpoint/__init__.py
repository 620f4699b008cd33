"""Checkpoints: a training run's Orbax checkpoints, the params-only checkpoint, reading either
for inference, and Hugging Face Ling import/export.

    ckpt = Checkpointer(f"{workdir}/checkpoints", cfg.checkpoint)    # a run's checkpoints
    model_cfg, variables = load("runs/x")            # a workdir (newest good step) or ...
    model_cfg, variables = load("ckpt/mini")         # ... a params checkpoint
    save_params("ckpt/mine", model_cfg, variables)   # a params checkpoint
    model_cfg, variables = load_hf("Ling-lite/")     # Hugging Face (hf/)
    python -m lingjax.cli.convert --from=hf --hf_dir=path/to/Ling-lite --out=ckpt

manager.py: async Orbax saves, retention for WSM, validated restores that fall back past corrupt
checkpoints, elastic restore onto any mesh. params.py: the params-only format (config, weights,
tokenizer). run.py: a workdir's layout and its weights without the optimizer state. legacy.py:
checkpoints from before the routed experts' gate and up were fused, converted on restore.
"""

from lingjax.checkpoint.hf import (
    HFCheckpointError,
    convert_from_hf,
    convert_to_hf,
    from_hf_config,
    load_hf,
    plan_hf,
    save_hf,
    to_hf_config,
)
from lingjax.checkpoint.manager import (
    Checkpointer,
    CheckpointError,
    CheckpointSaveError,
    Restored,
    default_shardings,
    restore,
    with_shardings,
)
from lingjax.checkpoint.params import (
    ParamsCheckpointError,
    is_params_dir,
    load_params,
    read_config,
    read_info,
    save_params,
)
from lingjax.checkpoint.run import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    is_run_dir,
    load,
    load_run,
    read_run_config,
)

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "CheckpointError",
    "CheckpointSaveError",
    "Checkpointer",
    "HFCheckpointError",
    "ParamsCheckpointError",
    "Restored",
    "convert_from_hf",
    "convert_to_hf",
    "default_shardings",
    "from_hf_config",
    "is_params_dir",
    "is_run_dir",
    "load",
    "load_hf",
    "load_params",
    "load_run",
    "plan_hf",
    "read_config",
    "read_info",
    "read_run_config",
    "restore",
    "save_hf",
    "save_params",
    "to_hf_config",
    "with_shardings",
]
