"""Two local processes (jax.distributed on 127.0.0.1, gloo collectives, 2 CPU devices each)
train 20 steps of `tiny` through the real CLI with the same losses as one process with 4
devices, and evaluate in the loop (a capability corpus, a task file) to the same numbers; only
process 0 writes metrics and progress lines.

The mesh (data=1, fsdp=1, expert=2, tensor=2) puts the expert axis across the two processes
(the ring's all-gather and reduce-scatter cross them) and tensor inside each. Each process
loads its half of every batch (rows 0-3 / 4-7); the one-process reference is fed the same
global batches, the two halves side by side, so both runs compute the same function.
"""

import json
import os

import grain
import numpy as np

from lingjax import configs
from lingjax.data import make_eval_datasets, make_train_iterator
from lingjax.train import evaluation, loop, train
from tests.support.cli import cpu_env, finish, spawn, train_cmd

STEPS = 20
OVERRIDES = {
    "model.num_layers": 2,
    "train.steps": STEPS,
    "train.log_every": 1,
    "train.batch_size": 8,
    "train.seq_len": 32,
    "mesh.data": 1,
    "mesh.fsdp": 1,
    "mesh.expert": 2,
    "mesh.tensor": 2,
}
# The two runs differ only in how the collectives add up (gloo across processes vs in-process);
# 20 AdamW steps amplify those roundings a little.
LOSS_RTOL = 1e-5  # measured: 0 on 2 devices a process (1.4e-7 with 4 devices a process)


class _Halves(grain.DatasetIterator):
    """The batches two processes load (process_count=2), concatenated: the global batch."""

    def __init__(self, make):
        self.parts = [make(process_index=i, process_count=2) for i in range(2)]
        super().__init__(self.parts)

    def __next__(self):
        halves = [next(p) for p in self.parts]
        return {k: np.concatenate([h[k] for h in halves]) for k in halves[0]}

    def get_state(self):
        return {"halves": [p.get_state() for p in self.parts]}

    def set_state(self, state):
        for p, s in zip(self.parts, state["halves"], strict=True):
            p.set_state(s)


class _Joined:
    """The validation batches two processes read, side by side (iterable again and again)."""

    def __init__(self, parts):
        self.parts = parts

    def __iter__(self):
        for halves in zip(*self.parts, strict=False):
            yield {k: np.concatenate([h[k] for h in halves]) for k in halves[0]}


def _rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _losses(workdir) -> list[float]:
    rows = _rows(workdir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return [r["loss"] for r in rows]


def _eval_overrides(tmp_path, corpus_dir) -> dict:
    """In-loop evaluation at the last step: the training corpus as a capability corpus (its
    batches split over the processes) and a task file (every process packs every pair)."""
    task = tmp_path / "pick.jsonl"
    lines = [
        {"question": f"{w} =", "choices": [f" {w}", f" {w[::-1]}"], "answer": 0}
        for w in ("import", "return", "class", "lambda", "yield")
    ] + [{"question": "x", "choices": ["a", "b", "c"], "answer": 2}]
    task.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {
        "eval.every": STEPS,
        "eval.batches": 2,
        "eval.capability": f"same={corpus_dir}",
        "eval.tasks": str(task),
        "eval.task_seq_len": 24,
    }


def test_two_processes_train_like_one(tmp_path, corpus_dir, monkeypatch):
    workdir = tmp_path / "two"
    evals = _eval_overrides(tmp_path, corpus_dir)
    cmd = train_cmd(workdir, corpus_dir, {**OVERRIDES, **evals})
    procs = spawn(cmd, cpu_env(devices=2), 2)
    try:
        # Meanwhile, the reference: 4 of this process's devices, fed both halves of every batch.
        cfg = configs.get("tiny", **OVERRIDES, **evals, **{"data.corpus": corpus_dir})

        def halves(data_cfg, *, process_index, process_count, **kw):
            assert (process_index, process_count) == (0, 1)
            return _Halves(lambda **p: make_train_iterator(data_cfg, **kw, **p))

        def eval_halves(data_cfg, *, process_index, process_count, **kw):
            parts = [
                make_eval_datasets(data_cfg, **kw, process_index=i, process_count=2)
                for i in range(2)
            ]
            return [
                (n, w, _Joined([p[j][2] for p in parts])) for j, (n, w, _) in enumerate(parts[0])
            ]

        monkeypatch.setattr(loop, "make_train_iterator", halves)
        monkeypatch.setattr(evaluation, "make_eval_datasets", eval_halves)
        train(cfg, str(tmp_path / "one"))
    finally:
        outs = finish(procs)
    two, one = _losses(workdir), _losses(tmp_path / "one")
    np.testing.assert_allclose(two, one, rtol=LOSS_RTOL)
    assert two[-1] < two[0]
    last = [_rows(w)[-1] for w in (workdir, tmp_path / "one")]
    keys = [k for k in last[1] if k.startswith(("capability/", "task/"))]
    assert "capability/same" in keys and "task/pick/acc" in keys
    for k in keys:
        np.testing.assert_allclose(last[0][k], last[1][k], rtol=LOSS_RTOL, err_msg=k)
    # Only process 0 logs: progress lines and "done" on its stdout, nothing on process 1's.
    assert f"step {STEPS}/{STEPS} | loss" in outs[0]
    assert "| loss" not in outs[1]
    saved = os.listdir(workdir / "checkpoints" / str(STEPS) / "data_iter")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(saved)  # each its data state
