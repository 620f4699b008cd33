"""cli.eval: every checkpoint of a workdir scored on the bundled synthetic tasks (one row per
step, JSON and a table), MaP rows scoring the merge of the last checkpoints, a checkpoint that
disappears while it is read skipped with one line, and bad input answered with exit 2 and
nothing written."""

import json
import os
import shutil

import pytest

from lingjax.data import ByteTokenizer, write_corpus
from lingjax.evaluate.checkpoints import evaluate_checkpoints
from lingjax.evaluate.synthetic import NAMES, write_synthetic_tasks
from lingjax.evaluate.tasks import read_task
from lingjax.merge import run_source, weighted_average
from tests.support.cli import run, train_run

WORDS = ("value", "name", "path", "size", "index", "key", "line", "file")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, corpus_dir):
    wd = tmp_path_factory.mktemp("eval") / "run"
    train_run(wd, corpus_dir)
    return wd


def test_every_checkpoint_of_a_run_gets_a_row(workdir, tmp_path):
    out = tmp_path / "eval.json"
    r = run(
        "lingjax.cli.eval",
        f"--checkpoint={workdir}",
        "--tasks=synthetic",
        "--synthetic_examples=6",
        "--seq_len=128",
        f"--out={out}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "blank"
    rows = result["rows"]
    assert [row["step"] for row in rows] == [2, 4, 6, 8, 10, 12]
    for row in rows:
        for name in ("copy", "lines"):
            assert 0 <= row[f"task/{name}/exact"] <= 1 and row[f"task/{name}/bits_per_byte"] > 0
        for name in ("brackets", "add", "docstring"):
            assert 0 <= row[f"task/{name}/acc_token"] <= 1
        assert row["task/add/examples"] == 6
    assert "checkpoint 6/6 (step 12)" in r.stdout and "task/add/acc" in r.stdout


def test_a_checkpoint_deleted_while_reading_is_skipped(workdir, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(workdir, run_copy)
    shutil.rmtree(run_copy / "params_checkpoints" / "4" / "state")  # as retention would
    tasks = [read_task(p) for p in write_synthetic_tasks(str(tmp_path / "t"), n=2)]
    lines = []
    rows = list(evaluate_checkpoints(str(run_copy), tasks, seq_len=128, log=lines.append))
    assert [row["step"] for row in rows] == [2, 6, 8, 10, 12]
    assert any(line.startswith("checkpoint 4 of") and "skipped" in line for line in lines)
    assert set(NAMES) == {k.split("/")[1] for k in rows[0] if k.startswith("task/")}


@pytest.mark.parametrize(
    "args, match",
    [
        ([], "--checkpoint=DIR is required"),
        (["--checkpoint=WD"], "--tasks=FILE.jsonl,... (or --routing"),
        (["--checkpoint=WD", "--tasks=BAD"], "bad.jsonl:2: field 'answer'"),
        (["--checkpoint=/nonexistent", "--tasks=synthetic"], "no such directory"),
        (["--checkpoint=WD", "--tasks=synthetic", "--out=EXISTS"], "exists"),
        (["--checkpoint=WD", "--tasks=synthetic", "--synthetic_examples=0"], "at least one"),
    ],
)
def test_bad_input_exits_2(workdir, tmp_path, args, match):
    bad = tmp_path / "bad.jsonl"
    good = '{"question": "q", "choices": ["a", "b"], "answer": 1}'
    bad.write_text(good + '\n{"question": "q", "choices": ["a", "b"], "answer": 5}\n')
    (tmp_path / "exists").write_text("keep me")
    subs = {"WD": str(workdir), "BAD": str(bad), "EXISTS": str(tmp_path / "exists")}
    for k, v in subs.items():
        args = [a.replace(k, v) for a in args]
    r = run("lingjax.cli.eval", *args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert match in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "exists").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "exists"]


def test_map_rows_score_the_merge_of_the_last_checkpoints(workdir, tmp_path):
    tasks = [read_task(p) for p in write_synthetic_tasks(str(tmp_path / "t"), n=3)]
    rows = list(evaluate_checkpoints(str(workdir), tasks, seq_len=128, merge_last=3, log=print))
    assert "task/copy/bits_per_byte_merged" not in rows[0]  # one checkpoint: nothing to merge
    # The last row's merge is the mean of steps 8, 10 and 12, scored like any params checkpoint.
    merged = tmp_path / "m"
    weighted_average([run_source(str(workdir), s) for s in (8, 10, 12)], [1 / 3] * 3, str(merged))
    (want,) = evaluate_checkpoints(str(merged), tasks, seq_len=128, tokenizer="byte")
    for k, v in want.items():
        assert rows[-1][f"{k}_merged"] == pytest.approx(v, rel=1e-6), k
    assert rows[-1]["task/copy/bits_per_byte_merged"] != rows[-1]["task/copy/bits_per_byte"]
    with pytest.raises(ValueError, match="is one params checkpoint"):
        next(evaluate_checkpoints(str(merged), tasks, merge_last=3, tokenizer="byte"))
    with pytest.raises(ValueError, match="merge at least 2"):
        next(evaluate_checkpoints(str(workdir), tasks, merge_last=1))


def test_routing_by_domain_writes_json_and_heatmaps(workdir, corpus_dir, tmp_path):
    docs = tmp_path / "docs"
    tok = ByteTokenizer()
    texts = [
        f"Return the {w} of the {v}, or None if there is no {w}." * 3 for w in WORDS for v in WORDS
    ]
    write_corpus(
        (tok.encode(t) for t in texts),
        str(docs),
        tokenizer="byte",
        vocab_size=tok.vocab_size,
        domain="docs",
    )
    out, png = tmp_path / "routing.json", tmp_path / "routing.png"
    r = run(
        "lingjax.cli.eval",
        f"--checkpoint={workdir}",
        f"--routing=code={corpus_dir},docs={docs}",
        "--routing_batches=2",
        "--seq_len=64",
        f"--out={out}",
        f"--plot={png}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    routing = json.loads(out.read_text())["routing"]
    assert routing["domains"] == ["code", "docs"]
    d = routing["divergence"]
    assert d[0][0] == d[1][1] == 0 and 0 < d[0][1] == d[1][0] <= 1
    assert png.stat().st_size > 1000 and "Jensen-Shannon" in r.stdout
    r = run("lingjax.cli.eval", f"--checkpoint={workdir}", f"--routing=code={corpus_dir}")
    assert r.returncode == 2 and "at least 2" in r.stderr
