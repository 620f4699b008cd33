"""Per-device memory of a config on a mesh, and whether it fits (nothing is allocated).

    python -m lingjax.cli.plan --config=ling-mini-2.0 --config.train.batch_size=4096 \
        --config.mesh.expert=8 --devices=64 --device_memory=80GiB [--json]

Parameters, optimizer state and gradients are the shard sizes of the real train state under the
rules table (lingjax/train/memory.py); activations are an estimate of the backward pass's
peak. The disk line is what the run's checkpoint retention keeps at its end (checkpoint.keep,
keep_every_steps, params_every_steps, params_keep). The mesh comes from --config.mesh.* as in
training (-1 = the rest of --devices).
"""

from __future__ import annotations

import json

from absl import flags

from lingjax.cli import common

common.define_config_flag("tiny")
flags.DEFINE_integer("devices", None, "Number of devices of the run (default: this machine's).")
flags.DEFINE_string(
    "device_memory", None, "Memory of one device, e.g. 80GiB, 16GB (default: no fit verdict)."
)
flags.DEFINE_enum(
    "platform",
    "gpu",
    ["gpu", "tpu", "cpu"],
    "Platform of the run; decides what model.moe.ep_transport=auto means for the estimate.",
)
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


def _gib(n: int) -> str:
    return f"{n / 2**30:10.2f} GiB"


def main(argv: list[str]) -> None:
    del argv
    cfg = common.resolved_config()
    F = common.FLAGS
    from lingjax.configs import ConfigError, parse_size

    memory = None
    if F.device_memory:
        try:
            memory = parse_size(F.device_memory)
        except ValueError as e:
            common.usage_error(f"--device_memory: {e}")
    import jax

    from lingjax.train.memory import plan_memory

    devices = F.devices if F.devices is not None else jax.device_count()
    if devices < 1:
        common.usage_error(f"--devices={devices} must be >= 1")
    try:
        plan = plan_memory(cfg, devices, memory, platform=F.platform)
    except ConfigError as e:
        common.usage_error(str(e))
    if F.json:
        print(json.dumps(plan))
        return
    mesh = " ".join(f"{k}={v}" for k, v in plan["mesh"].items())
    print(
        f"{plan['config']} on {devices} devices, mesh {mesh}: {plan['rows_per_device']} rows x "
        f"{plan['seq_len']} tokens per device"
    )
    b, acts = plan["bytes"], plan["activations"]
    for key in ("params", "optimizer", "gradients"):
        print(f"  {key:<12}{_gib(b[key])}")
    parts = ", ".join(f"{k.replace('_', ' ')} {v / 2**30:.2f}" for k, v in acts.items())
    print(f"  {'activations':<12}{_gib(b['activations'])}  (estimate, GiB: {parts})")
    if "local_sgd" in b:
        print(f"  {'local SGD':<12}{_gib(b['local_sgd'])}  (theta_synced and outer momentum, fp32)")
    line = f"  {'total':<12}{_gib(b['total'])}"
    if memory is not None:
        verdict = "fits" if plan["fits"] else "does NOT fit"
        line += f"  of {memory / 2**30:.2f} GiB per device: {verdict}"
    print(line)
    d = plan["disk"]
    print(
        f"  disk        {_gib(d['total_bytes'])}  at the end of {cfg.train.steps} steps: "
        f"{d['checkpoints_kept']} checkpoints of {d['checkpoint_bytes'] / 2**30:.2f} GiB, "
        f"{d['params_copies_kept']} params copies of {d['params_copy_bytes'] / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    common.run(main)
