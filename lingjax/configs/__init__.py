"""Configuration: frozen dataclasses, named presets and typed overrides.

cfg = lingjax.configs.get("ling-mini-2.0", num_layers=4)
cfg = lingjax.configs.get("tiny", **{"train.steps": 40})
"""

from __future__ import annotations

import os
import runpy
from typing import Any

from lingjax.configs.base import (
    AnomalyConfig,
    AttentionConfig,
    C3POConfig,
    CheckpointConfig,
    Config,
    ConfigError,
    CorpusSpec,
    DataConfig,
    DPOConfig,
    EvalConfig,
    LocalSGDConfig,
    MeshConfig,
    ModelConfig,
    MoEConfig,
    OptimizerConfig,
    PenaltyConfig,
    ScheduleConfig,
    SpikeConfig,
    StepConfig,
    TrainConfig,
)
from lingjax.configs.overrides import (
    apply,
    from_dict,
    leaf_paths,
    parse_mixture,
    resolve_key,
    to_dict,
    to_json,
)
from lingjax.configs.presets import names, preset, register
from lingjax.configs.sizes import parse_size


def load(name_or_path: str) -> Config:
    """A preset by name, or the `config()` of an experiment file (`experiments/foo.py`)."""
    if name_or_path.endswith(".py"):
        if not os.path.isfile(name_or_path):
            raise ConfigError(f"config file {name_or_path!r} does not exist")
        # An experiment file is the user's own Python: it defines `config() -> Config`.
        namespace = runpy.run_path(name_or_path)
        fn = namespace.get("config")
        if not callable(fn):
            raise ConfigError(f"{name_or_path} must define a function `config() -> Config`")
        cfg = fn()
        if not isinstance(cfg, Config):
            raise ConfigError(f"{name_or_path}: config() returned {type(cfg).__name__}, not Config")
        return cfg.validate()
    return preset(name_or_path).validate()


def get(name_or_path: str, **overrides: Any) -> Config:
    """A preset (or experiment file) with overrides; keys may be dotted paths, `a__b`, or field
    names unique in the config tree (`num_layers=4` sets `model.num_layers`)."""
    return apply(load(name_or_path), overrides)


__all__ = [
    "AnomalyConfig",
    "AttentionConfig",
    "C3POConfig",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "CorpusSpec",
    "DPOConfig",
    "DataConfig",
    "EvalConfig",
    "LocalSGDConfig",
    "MeshConfig",
    "MoEConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PenaltyConfig",
    "ScheduleConfig",
    "SpikeConfig",
    "StepConfig",
    "TrainConfig",
    "apply",
    "from_dict",
    "get",
    "leaf_paths",
    "load",
    "names",
    "parse_mixture",
    "parse_size",
    "preset",
    "register",
    "resolve_key",
    "to_dict",
    "to_json",
]
