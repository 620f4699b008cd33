"""What the checkpoint checksums cost: sealing (CRC-32 of every file a save wrote, after the
commit) and verifying (before a restore), against the save and the restore themselves.

    .venv/bin/python experiments/bench/checksums.py                  # ~200 MB of train state
    .venv/bin/python experiments/bench/checksums.py --mib=1024 --repeats=5

Method: a train state of random fp32 arrays of the asked size, saved by the real `Checkpointer`
(async save, then wait) into a temporary directory; `seal_step` and `validate_step` (which
verifies) timed separately, alternating with full restores; medians over `--repeats`. The
files are in the page cache (just written/read), as on a fast local disk: on a network file
system reading them back costs what a restore's read costs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np

from lingjax.checkpoint import Checkpointer
from lingjax.checkpoint.manager import CHECKSUMS, seal_step, validate_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    n = a.mib * 2**20 // 4 // 8
    state = {f"w{i}": jax.device_put(rng.standard_normal(n, np.float32)) for i in range(8)}
    abstract = jax.eval_shape(lambda: state)
    rows = {"save": [], "seal": [], "verify": [], "restore": []}
    with tempfile.TemporaryDirectory() as root:
        for r in range(a.repeats):
            ckpt = Checkpointer(os.path.join(root, f"ck{r}"))
            t = time.perf_counter()
            ckpt.save(1, state)
            ckpt._mgr.wait_until_finished()  # the save alone, without sealing
            rows["save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            seal_step(ckpt.directory, 1)
            rows["seal"].append(time.perf_counter() - t)
            ckpt._unsealed.clear()
            t = time.perf_counter()
            validate_step(ckpt.directory, 1, ("state",))
            rows["verify"].append(time.perf_counter() - t)
            t = time.perf_counter()
            jax.block_until_ready(ckpt.restore(1, abstract, items=("state",)).state)
            rows["restore"].append(time.perf_counter() - t)
            assert os.path.isfile(os.path.join(ckpt.directory, "1", CHECKSUMS))
            ckpt.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"# {datetime.date.today()} {platform.node()} jax {jax.__version__}, {a.mib} MiB state")
    print("| step | median s | MB/s | ratio |")
    print("|---|---|---|---|")
    for k in rows:
        base = med["save"] if k == "seal" else med["restore"] if k == "verify" else med[k]
        print(f"| {k} | {med[k]:.3f} | {a.mib * 1.048576 / med[k]:,.0f} | {med[k] / base:.2f} |")


if __name__ == "__main__":
    main()
