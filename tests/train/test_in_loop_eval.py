"""In-loop evaluation (cfg.eval): capability corpora, task files and MaP merges land in
metrics.jsonl with the numbers the offline tools give for the same checkpoints; bad inputs are
refused before the workdir is written."""

import json
import os
import pathlib
import sysconfig

import numpy as np
import pytest

from lingjax import configs
from lingjax.configs import ConfigError
from lingjax.data import ByteTokenizer, CorpusError, write_corpus
from lingjax.evaluate.checkpoints import evaluate_checkpoints
from lingjax.evaluate.tasks import read_task
from lingjax.train import train


def _corpus(path, files):
    tok = ByteTokenizer()
    write_corpus(
        (tok.encode(f.read_text(errors="replace")[:4000]) for f in files),
        path,
        tokenizer=tok.kind,
        tokenizer_hash=tok.sha256,
        vocab_size=tok.vocab_size,
        domain=path.name,
    )
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A training corpus, a capability corpus of other files, and two small task files."""
    files = sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    choice = [
        {"question": f"{w} =", "choices": [f" {w}", f" {w[::-1]}x"], "answer": 0}
        for w in ("import", "return", "class", "def", "self", "None")
    ]
    words = ["import os", "return x", "def f(", "class A", "self.x = "]
    completion = [{"context": w[:-2], "continuation": w[-2:]} for w in rng.permutation(words)]
    tasks = []
    for name, lines in (("pick", choice), ("finish", completion)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        tasks.append(str(path))
    return {
        "train": _corpus(root / "train", files[::2]),
        "held": _corpus(root / "held", files[1::2]),
        "tasks": tasks,
    }


def _cfg(inputs, **overrides):
    return configs.get(
        "tiny",
        **{
            "model.num_layers": 1,
            "model.first_k_dense": 1,  # a dense layer compiles fastest; evaluation is tested
            "mesh.data": 1,
            "mesh.fsdp": 2,  # MaP restores checkpoints into a sharded layout
            "train.steps": 6,
            "train.log_every": 3,
            "train.batch_size": 4,
            "train.seq_len": 32,
            "data.corpus": inputs["train"],
            "data.tokenizer": "byte",
            "eval.every": 3,
            "eval.batches": 2,
            "eval.capability": f"held={inputs['held']}",
            "eval.tasks": ",".join(inputs["tasks"]),
            "eval.task_mode": "cloze",
            "eval.task_seq_len": 32,
            "eval.merge_last": 2,
            "checkpoint.params_every_steps": 3,
            **overrides,
        },
    )


def test_capability_tasks_and_map_in_the_loop_match_the_offline_scores(inputs, tmp_path):
    cfg = _cfg(inputs)
    train(cfg, str(tmp_path))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]
    first, last = rows
    for r in rows:
        assert np.isfinite(r["capability/held"]) and "val_loss" not in r, "no held-out split"
        assert {"task/pick/acc", "task/pick/acc_byte", "task/finish/exact"} <= set(r)
    assert last["capability/held"] < first["capability/held"], "it learns the language"
    # Nothing was saved before step 3; at step 6 the step-3 copy is merged with step 6.
    assert "capability/held_merged" not in first
    assert last["merged_checkpoints"] == 2
    assert last["capability/held_merged"] != last["capability/held"]
    # The offline tool (lingjax.cli.eval's) on the saved checkpoints gives the loop's numbers,
    # for the weights of each step and for the MaP merge of steps 3 and 6.
    tasks = [read_task(p) for p in inputs["tasks"]]
    offline = {
        r["step"]: r
        for r in evaluate_checkpoints(
            str(tmp_path), tasks, mode="cloze", rows=4, seq_len=32, merge_last=2, log=print
        )
    }
    for row in rows:
        for key in [k for k in row if k.startswith("task/")]:
            assert row[key] == pytest.approx(offline[row["step"]][key], rel=1e-5), key
    assert any(k.endswith("_merged") and k.startswith("task/") for k in last)


def test_bad_eval_inputs_are_refused_before_the_workdir_is_written(inputs, tmp_path):
    bad_task = tmp_path / "bad.jsonl"
    bad_task.write_text('{"question": "q", "choices": ["a"], "answer": 0}\n')
    cases = [
        ({"eval.capability": f"held={tmp_path / 'nowhere'}"}, CorpusError, "nowhere"),
        ({"eval.tasks": str(bad_task)}, ConfigError, r"eval.tasks: .*bad.jsonl:1: field 'choices'"),
        ({"eval.task_seq_len": 10**6}, ConfigError, "exceeds model.max_position_embeddings"),
    ]
    for overrides, error, needle in cases:
        workdir = tmp_path / "run"
        with pytest.raises(error, match=needle):
            train(_cfg(inputs, **overrides), str(workdir))
        assert not os.path.exists(workdir), overrides


def test_eval_config_errors_name_the_key(inputs):
    base = configs.get("tiny")
    cases = [
        ({"eval.every": 5}, "nothing to evaluate"),
        (
            {"eval.every": 5, "data.eval_fraction": 0.1, "eval.merge_last": 3},
            "saves none before its end: set checkpoint.params_every_steps",
        ),
        (
            {
                "eval.every": 5,
                "data.eval_fraction": 0.1,
                "eval.merge_last": 4,
                "checkpoint.every_steps": 5,
                "checkpoint.keep": 2,
            },
            "raise checkpoint.keep to >= 3",
        ),
        ({"eval.merge_last": 1}, "merges nothing"),
        ({"eval.task_mode": "guess"}, "eval.task_mode='guess' must be one of"),
        ({"eval.capability": "a=/x,a=/y"}, "names 'a' twice"),
        ({"data.eval_batches": 2}, "data.eval_batches is now eval.batches"),
    ]
    for overrides, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            configs.apply(base, overrides)


def test_config_files_from_before_the_eval_section_load():
    old = configs.to_dict(configs.get("tiny"))
    del old["eval"]
    old["data"].update(eval_every=25, eval_batches=8)
    cfg = configs.from_dict(old)
    assert (cfg.eval.every, cfg.eval.batches) == (25, 8)
    assert "eval_every" not in configs.to_dict(cfg)["data"]
