"""Streaming: converting a checkpoint with Ling-lite's layer shapes (1 layer of 32 experts, a
65,536-token vocabulary, bf16, 1.2 GB) costs at most 2x its largest tensor (the 268 MB
embedding) above the process baseline, in both directions. Measured in fresh subprocesses from
/proc/self/status (VmRSS before the conversion, VmHWM after)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
from safetensors.numpy import save_file

from lingjax.checkpoint.hf.safetensors_io import SafetensorsReader
from tests.support import hf_synth

LING_LITE_2_LAYERS = hf_synth.v1_config(
    vocab_size=65536,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=1,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=128,
    num_experts=32,
    num_shared_experts=2,
    num_experts_per_tok=6,
    moe_intermediate_size=1408,
    rope_theta=600000.0,
    max_position_embeddings=16384,
    eos_token_id=1,
    pad_token_id=1,
    norm_head=True,
)

_MEASURE = textwrap.dedent(
    """
    import json, sys
    import jax
    import lingjax.api  # the process baseline: libraries imported, the CPU backend up
    import lingjax.checkpoint as ck

    jax.devices()

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    baseline = status("VmRSS")
    if sys.argv[1] == "from_hf":
        ck.convert_from_hf(sys.argv[2], sys.argv[3])
    else:
        ck.convert_to_hf(sys.argv[2], sys.argv[3])
    print(json.dumps({"baseline": baseline, "peak": status("VmHWM")}))
    """
)


def _write_synthetic(directory: str) -> None:
    """Cheap bf16 content (a random vector tiled), shards of at most ~600 MB."""
    os.makedirs(directory)
    base = np.random.default_rng(0).standard_normal(1 << 20).astype(hf_synth.BF16)
    shapes = hf_synth.hf_shapes(LING_LITE_2_LAYERS)
    shard, size, n, weight_map = {}, 0, 0, {}

    def flush():
        nonlocal shard, size, n
        n += 1
        name = f"part-{n:03d}.safetensors"
        save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard, size = {}, 0

    for key, shape in shapes.items():
        t = np.resize(base, shape)
        if size + t.nbytes > 600e6 and shard:
            flush()
        shard[key], size = t, size + t.nbytes
    flush()
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({**LING_LITE_2_LAYERS, "torch_dtype": "bfloat16"}, f)


def _measure(direction: str, src: str, dst: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's conversion runs
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, direction, src, dst],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _digests(directory: str, keys) -> dict[str, str]:
    reader = SafetensorsReader(directory)
    return {k: hashlib.sha256(reader.read_rows(k).tobytes()).hexdigest() for k in keys}


def _workspace(tmp_path) -> str:
    """/dev/shm (RAM-backed: no disk writeback to wait for) when 16 GiB are free for the
    ~7 GiB of files, else the test's tmp directory."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(x.split()[1]) * 1024 for x in f if x.startswith("MemAvailable:"))
        if avail > 16 * 2**30 and shutil.disk_usage("/dev/shm").free > 8 * 2**30:
            return tempfile.mkdtemp(prefix="lingjax-hf-memory-", dir="/dev/shm")
    except (OSError, StopIteration):
        pass
    return str(tmp_path)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_conversion_peak_memory_is_bounded_by_the_largest_tensor(tmp_path):
    work = _workspace(tmp_path)
    hf, ckpt, back = (os.path.join(work, n) for n in ("hf", "ckpt", "back"))
    checked = (
        "lm_head.weight",
        "model.layers.0.attention.query_key_value.weight",
        "model.layers.0.mlp.experts.31.down_proj.weight",
        "model.layers.0.mlp.gate.weight",
    )
    try:
        _write_synthetic(hf)
        src = SafetensorsReader(hf)
        names = sorted(src.entries)
        largest = max(e.nbytes for e in src.entries.values())
        total = sum(e.nbytes for e in src.entries.values())
        assert largest == 65536 * 2048 * 2 and total > 4 * largest  # the model >> one tensor
        expected = _digests(hf, checked)
        for direction, a, b in (("from_hf", hf, ckpt), ("to_hf", ckpt, back)):
            m = _measure(direction, a, b)
            shutil.rmtree(a)  # (dirty pages of deleted files need no disk writes)
            extra = m["peak"] - m["baseline"]
            print(
                f"{direction}: baseline {m['baseline'] / 2**20:.0f} MiB, peak "
                f"{m['peak'] / 2**20:.0f} MiB, +{extra / 2**20:.0f} MiB (largest tensor "
                f"{largest / 2**20:.0f} MiB, checkpoint {total / 2**30:.2f} GiB)"
            )
            assert extra <= 2 * largest
        assert sorted(SafetensorsReader(back).entries) == names
        assert _digests(back, checked) == expected
    finally:
        shutil.rmtree(work, ignore_errors=True)  # up to ~2.5 GB
