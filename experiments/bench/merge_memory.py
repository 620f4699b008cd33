"""Peak host memory of a streaming merge, against the model and its largest tensor.

    .venv/bin/python experiments/bench/merge_memory.py            # 4 sources, ~2 GB of files
    .venv/bin/python experiments/bench/merge_memory.py --sources=8 --block_mb=16,64

Method: `--sources` params checkpoints of tiny-v2 widened to a 110,592-token vocabulary and 512
hidden (453 MiB of fp32 variables; the embedding and the head are 216 MiB each), random
content; each merge runs in a fresh subprocess that imports lingjax and starts the CPU backend
(the baseline, VmRSS), then merges (`weighted_average` and TIES at each --block_mb; TIES also
holds one fp32 tensor of |tau| to find its trim threshold) and reports VmHWM (the peak resident
set). The files live in /dev/shm when it has room (no disk writeback inside the measurement),
else in a temporary directory. Run it twice, with and without MALLOC_ARENA_MAX=1: glibc's
per-thread arenas (tensorstore reads on a thread pool) keep freed blocks resident.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap

import jax
import numpy as np

from lingjax import configs
from lingjax.checkpoint import save_params
from lingjax.model import tree_from_leaves, variable_table

_MEASURE = textwrap.dedent(
    """
    import json, sys
    import jax
    import lingjax.merge as merge

    jax.devices()

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    method, block, out, *paths = sys.argv[1:]
    sources = [merge.params_source(p) for p in paths]
    baseline = status("VmRSS")
    if method == "average":
        w = [1.0 / len(sources)] * len(sources)
        merge.weighted_average(sources, w, out, block_bytes=int(block) << 20)
    else:
        merge.task_merge(
            sources[0], sources[1:], out, method="ties", density=0.2,
            block_bytes=int(block) << 20,
        )
    print(json.dumps({"baseline": baseline, "peak": status("VmHWM")}))
    """
)


def _workspace(need: int) -> str:
    free = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
    base = "/dev/shm" if free > 2 * need else None
    return tempfile.mkdtemp(prefix="lingjax-merge-bench-", dir=base)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", type=int, default=4)
    p.add_argument("--block_mb", default="16,64")
    a = p.parse_args()
    cfg = configs.get("tiny-v2", **{"model.hidden_size": 512, "model.vocab_size": 110592})
    table = variable_table(cfg.model)
    sizes = {leaf: int(np.prod(shape)) * dtype.itemsize for leaf, (shape, dtype) in table.items()}
    total, largest = sum(sizes.values()), max(sizes.values())
    work = _workspace(total * (a.sources + 3))
    rng = np.random.default_rng(0)
    base = rng.standard_normal(1 << 20).astype(np.float32)
    try:
        paths = []
        for i in range(a.sources):
            leaves = {
                leaf: np.resize(np.roll(base, i), shape).astype(dtype)
                for leaf, (shape, dtype) in table.items()
            }
            paths.append(
                save_params(os.path.join(work, f"src{i}"), cfg.model, tree_from_leaves(leaves))
            )
            del leaves
        blocks = [int(b) for b in a.block_mb.split(",")]
        runs = [("average", b) for b in blocks] + [("ties", b) for b in blocks]
        rows = []
        for method, block in runs:
            out = os.path.join(work, f"out-{method}-{block}")
            env = {**os.environ, "JAX_PLATFORMS": "cpu"}
            env.pop("XLA_FLAGS", None)
            r = subprocess.run(
                [sys.executable, "-c", _MEASURE, method, str(block), out, *paths],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if r.returncode:
                raise SystemExit(r.stderr[-3000:])
            m = json.loads(r.stdout.strip().splitlines()[-1])
            shutil.rmtree(out)
            extra = m["peak"] - m["baseline"]
            rows.append((method, block, m["baseline"], extra))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = 2**20
    print(
        f"## Streaming merge peak memory, {datetime.date.today()}\n\n"
        f"{platform.node() and 'CPU host'} ({os.cpu_count()} cores), jax {jax.__version__}, "
        f"Python {platform.python_version()}; command: `{' '.join(['python', *sys.argv])}`\n\n"
        f"{a.sources} sources of {total / mib:.0f} MiB each (largest tensor "
        f"{largest / mib:.0f} MiB); extra = VmHWM - VmRSS after imports.\n"
    )
    print("| merge | block | baseline MiB | extra MiB | extra / largest tensor | extra / model |")
    print("|---|---|---|---|---|---|")
    for method, block, baseline, extra in rows:
        print(
            f"| {method} | {block} MiB | {baseline / mib:.0f} | {extra / mib:.0f} | "
            f"{extra / largest:.2f}x | {extra / total:.2f}x |"
        )


if __name__ == "__main__":
    main()
