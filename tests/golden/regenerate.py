"""Golden files: what must not drift silently, rendered as text for readable diffs.

    .venv/bin/python -m tests.golden.regenerate          # rewrite tests/golden/* from the code
    .venv/bin/python -m pytest tests/test_golden.py      # diff the code against them

  presets/<name>.txt    the flattened config of every preset ("key = value", sorted)
  params/<name>.txt     the parameter table of tiny, tiny-v2 and a 2-layer ling-mini-2.0: name,
                        shape, dtype, logical axes, PartitionSpec on a (2, 2, 2, 1) mesh
  hf/<arch>.txt         the Hugging Face export of tiny (v1) and tiny-v2 (v2): config.json and
                        every tensor key with its shape

A change to any of them is a change users see (a preset's recipe, a checkpoint's layout, a
sharding): regenerate in the same commit as the code change and say why in its message.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

GOLDEN = os.path.dirname(os.path.abspath(__file__))
MESH = {"data": 2, "fsdp": 2, "expert": 2, "tensor": 1}
PARAM_TABLES = {
    "tiny": ("tiny", {}),
    "tiny-v2": ("tiny-v2", {}),
    "ling-mini-2.0-2layers": ("ling-mini-2.0", {"model.num_layers": 2}),
}
HF_EXPORTS = {"v1": "tiny", "v2": "tiny-v2"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def preset_text(name: str) -> str:
    from lingjax import configs

    flat = _flatten(configs.to_dict(configs.get(name)))
    return "".join(f"{k} = {json.dumps(flat[k])}\n" for k in sorted(flat))


def params_text(preset: str, overrides: dict) -> str:
    import flax.linen as nn
    import jax

    from lingjax import configs
    from lingjax.model import abstract_variables
    from lingjax.parallel import abstract_mesh, logical_specs, variable_shardings

    cfg = configs.get(preset, **overrides).model
    boxed = abstract_variables(cfg)
    specs = logical_specs(boxed)
    shardings = variable_shardings(boxed, abstract_mesh(MESH))
    is_box = lambda x: isinstance(x, nn.Partitioned)
    rows = []
    flat = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=is_box)[0]
    spec_leaves = jax.tree.leaves(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    shard_leaves = jax.tree.leaves(
        shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
    )
    for (path, box), pspec, sharding in zip(flat, spec_leaves, shard_leaves, strict=True):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        assert sharding.spec == pspec, name
        value = box.value
        rows.append(
            f"{name} | {list(value.shape)} | {value.dtype} | {list(box.names)} | {tuple(pspec)}"
        )
    where = f"{preset} {overrides}" if overrides else preset
    header = f"# {where}: name | shape | dtype | logical axes | PartitionSpec on {MESH}\n"
    return header + "".join(r + "\n" for r in sorted(rows))


def hf_text(arch: str) -> str:
    from lingjax import configs
    from lingjax.checkpoint.hf.config import to_hf_config
    from lingjax.checkpoint.hf.layout import tensor_maps

    cfg = configs.get(HF_EXPORTS[arch]).model
    config = to_hf_config(cfg, arch)
    keys = sorted(f"{t.hf_key} {list(t.hf_shape)}" for t in tensor_maps(cfg))
    return (
        f"# {HF_EXPORTS[arch]} exported as {config['architectures'][0]}\n"
        + json.dumps(config, indent=1, sort_keys=True)
        + "\n"
        + "".join(k + "\n" for k in keys)
    )


def golden_files() -> dict[str, Callable[[], str]]:
    """{path relative to tests/golden: function rendering its expected text}."""
    from lingjax import configs

    out: dict[str, Callable[[], str]] = {}
    for name in configs.names():
        out[f"presets/{name}.txt"] = lambda name=name: preset_text(name)
    for file, (preset, overrides) in PARAM_TABLES.items():
        out[f"params/{file}.txt"] = lambda p=preset, o=overrides: params_text(p, o)
    for arch in HF_EXPORTS:
        out[f"hf/{arch}.txt"] = lambda a=arch: hf_text(a)
    return out


def main() -> int:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    files = golden_files()
    for rel, render in files.items():
        path = os.path.join(GOLDEN, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        text = render()
        old = None
        if os.path.exists(path):
            with open(path) as f:
                old = f.read()
        with open(path, "w") as f:
            f.write(text)
        print(f"{'unchanged' if old == text else 'wrote':>9}  tests/golden/{rel}")
    known = set(files)
    for sub in ("presets", "params", "hf"):
        for name in sorted(os.listdir(os.path.join(GOLDEN, sub))):
            if f"{sub}/{name}" not in known:
                os.remove(os.path.join(GOLDEN, sub, name))
                print(f"{'removed':>9}  tests/golden/{sub}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
