"""python -m lingjax.cli.build_corpus: a corpus whose manifest matches an independent count;
bad input exits 2 with one line naming the file (and line) and the fix, and writes nothing."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.support.corpora import word_tokenizer

TEXTS = ["the cat sat on the mat", "dog ran far", "héllo 🙂 and unknown words", "", "cat " * 40]


def run(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "lingjax.cli.build_corpus", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "in").mkdir()
    for name, texts in (("a", TEXTS), ("b", TEXTS[::-1] * 2)):
        with open(tmp_path / "in" / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t, "source": name}) + "\n" for t in texts)
    return tmp_path


def _independent_count(tmp_path):
    """Documents and tokens (one per whitespace-separated word, + EOS) read straight from the
    jsonl files with the json module."""
    docs = tokens = 0
    for name in ("a", "b"):
        for line in (tmp_path / "in" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            words = len(json.loads(line)["text"].split())
            if words:
                docs, tokens = docs + 1, tokens + words + 1
    return docs, tokens


def test_builds_a_corpus_whose_manifest_matches_an_independent_count(inputs):
    tok = word_tokenizer(inputs / "tokenizer.json")
    out = inputs / "corpus"
    r = run(
        f"--input={inputs}/in/*.jsonl",
        f"--tokenizer={tok}",
        "--domain=web",
        f"--output={out}",
        "--docs_per_shard=5",
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    docs, tokens = _independent_count(inputs)
    assert (manifest["num_documents"], manifest["num_tokens"]) == (docs, tokens)
    assert sum(s["tokens"] for s in manifest["shards"]) == tokens
    assert [s["documents"] for s in manifest["shards"]] == [5, 5, docs - 10]
    assert manifest["tokenizer"] == "hf" and len(manifest["tokenizer_hash"]) == 64
    assert manifest["domain"] == "web" and manifest["eos_id"] == 11
    assert f"{docs:,} documents, {tokens:,} tokens" in r.stdout
    assert "build_corpus: 100.0% of" in r.stderr and "docs (" in r.stderr and "M/s" in r.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--input={d}/in/*.txt"], "matches no files"),
        (["--input={d}/in/*.jsonl", "--text_field=body"], r'a.jsonl:1: no "body" field'),
        (["--input={d}/in/bad.jsonl"], r"bad.jsonl:2: not valid JSON"),
        (["--input={d}/in/*.jsonl", "--tokenizer={d}/nope.json"], "nope.json does not exist"),
        (["--input={d}/in/*.jsonl", "--tokenizer=byte", "--eos_token=</s>"], "only applies"),
        (["--input={d}/in/*.jsonl", "--domain="], "--domain is required"),
        (["--input={d}/in/*.jsonl", "--formatt=jsonl"], "formatt"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(inputs, args, needle):
    (inputs / "in" / "bad.jsonl").write_text('{"text": "ok"}\n{"text": "cut\n')
    before = sorted(os.listdir(inputs))
    args = [a.format(d=inputs) for a in args]
    if not any(a.startswith("--domain") for a in args):
        args.append("--domain=web")
    r = run(*args, f"--output={inputs}/corpus", "--noprogress")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert re.search(needle, lines[0]), lines[0]
    assert sorted(os.listdir(inputs)) == before, "nothing written"


def test_skip_counts_bad_lines_and_an_existing_output_is_refused(inputs):
    bad = inputs / "in" / "bad.jsonl"
    bad.write_text('{"text": "ok then"}\nnot json\n{"other": 1}\n{"text": "fine"}\n')
    out = inputs / "corpus"
    args = [f"--input={bad}", "--domain=web", f"--output={out}", "--noprogress"]
    r = run(*args, "--bad_lines=skip")
    assert r.returncode == 0, r.stderr
    assert "2 bad records skipped" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_documents"] == 2 and manifest["metadata"]["records_skipped"] == 2
    assert manifest["num_tokens"] == len("ok then") + len("fine") + 2
    r = run(*args)
    assert r.returncode == 2 and "already exists" in r.stderr
