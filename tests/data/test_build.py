"""The corpus builder: readers (txt, jsonl, parquet, gzip), tokenisation, manifest counts,
bad input (named file and line, nothing half-written) and the progress line."""

import gzip
import io
import json
import os

import pytest

from lingjax.data import ByteTokenizer, CorpusError, load_tokenizer, read_manifest
from lingjax.data.build import build_corpus
from lingjax.data.readers import InputError, ReadStats, find_inputs, infer_format, read_texts
from tests.support.corpora import records, word_tokenizer

TEXTS = [
    "the cat sat on the mat",
    "dog ran far",
    "héllo 🙂 the unknown words",
    "",  # empty: dropped
    "the " * 50,
    "cat",
]


def _write_jsonl(path, texts, extra=None, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, "text": t, **(extra or {})}) + "\n")
            if i == 1:
                f.write("\n")  # blank lines are ignored
    return str(path)


def _build(tmp_path, files, fmt, tokenizer=None, **kw):
    return build_corpus(
        files,
        fmt=fmt,
        tokenizer=tokenizer or ByteTokenizer(),
        domain="web",
        output=str(tmp_path / "out"),
        **kw,
    )


def _nothing_written(tmp_path, inputs):
    assert sorted(os.listdir(tmp_path)) == sorted(inputs), "no output, no temporary directory"


def test_jsonl_token_counts_match_an_independent_count(tmp_path):
    tok_path = word_tokenizer(tmp_path / "tokenizer.json")
    a = _write_jsonl(tmp_path / "a.jsonl", TEXTS[:4])
    b = _write_jsonl(tmp_path / "b.jsonl.gz", TEXTS[4:] * 3, opener=gzip.open)
    files = find_inputs(str(tmp_path / "*.jsonl*"))
    assert files == [a, b] and infer_format(files) == "jsonl"
    tok = load_tokenizer(tok_path)
    m = _build(tmp_path, files, "jsonl", tok, docs_per_shard=4)
    texts = [t for t in TEXTS[:4] + TEXTS[4:] * 3 if t]
    # WordLevel over whitespace: one token per word, + EOS; counted without the tokenizer.
    lengths = [len(t.split()) + 1 for t in texts]
    assert (m.num_documents, m.num_tokens) == (len(texts), sum(lengths))
    assert [s.documents for s in m.shards] == [4, 4, 1]
    assert [s.tokens for s in m.shards] == [sum(lengths[i : i + 4]) for i in (0, 4, 8)]
    raw = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert raw["tokenizer"] == "hf" and raw["tokenizer_hash"] == tok.sha256
    assert (raw["vocab_size"], raw["eos_id"], raw["domain"]) == (tok.vocab_size, tok.eos_id, "web")
    meta = raw["metadata"]
    assert meta["tokenizer_path"] == tok_path and meta["eos_token"] == "</s>"
    assert meta["records_skipped"] == 0 and meta["empty_documents_skipped"] == 1
    assert meta["input_paths"] == files and meta["format"] == "jsonl"
    recs = records(tmp_path / "out", m)
    assert all(r[-1] == tok.eos_id for r in recs)
    assert [tok.decode(r[:-1]) for r in recs[:2]] == texts[:2]


def test_txt_files_and_lines_with_the_byte_tokenizer(tmp_path):
    (tmp_path / "in").mkdir()
    docs = ["first file\nwith two lines\n", "", "ünïcode 🙂\n\nlast"]
    for i, d in enumerate(docs):
        (tmp_path / "in" / f"{i}.txt").write_text(d, encoding="utf-8")
    files = find_inputs(str(tmp_path / "in" / "*.txt"))
    m = _build(tmp_path, files, "txt")
    nonempty = [d for d in docs if d]
    assert (m.num_documents, m.num_tokens) == (2, sum(len(d.encode()) + 1 for d in nonempty))
    assert [ByteTokenizer().decode(r) for r in records(tmp_path / "out", m)] == nonempty
    lines = [line for d in docs for line in d.split("\n") if line]
    stats = ReadStats()
    assert list(read_texts(files, "txt", txt_unit="line", stats=stats)) == lines
    assert stats.bytes_done == stats.bytes_total and stats.files_done == 3


def test_parquet_column_and_null_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "p.parquet")
    table = pa.table({"id": [1, 2, 3, 4], "content": ["the cat", None, "dog", "far far"]})
    pq.write_table(table, path, row_group_size=2)
    with pytest.raises(InputError, match=rf"{path}: row 2: 'content' is null.*--bad_lines=skip"):
        list(read_texts([path], "parquet", text_field="content"))
    stats = ReadStats()
    got = list(read_texts([path], "parquet", text_field="content", bad_lines="skip", stats=stats))
    assert got == ["the cat", "dog", "far far"] and stats.skipped == 1
    with pytest.raises(InputError, match=r"no column 'text' \(columns: id, content\)"):
        list(read_texts([path], "parquet"))
    with pytest.raises(InputError, match="column 'id' has type int64, not string"):
        list(read_texts([path], "parquet", text_field="id"))
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet")
    with pytest.raises(InputError, match=r"x.parquet is not a readable parquet file"):
        list(read_texts([str(bad)], "parquet"))
    m = _build(tmp_path, [path], "parquet", text_field="content", bad_lines="skip")
    assert m.num_tokens == sum(len(t) + 1 for t in got)
    assert m.metadata["records_skipped"] == 1


@pytest.mark.parametrize(
    "line,needle",
    [
        ('{"text": "ok"', r"b.jsonl:3: not valid JSON \(Expecting"),
        ('["a list"]', r"b.jsonl:3: a JSON list, not an object"),
        ('{"body": "x", "n": 1}', r'b.jsonl:3: no "text" field; pass --text_field with .*: body'),
        ('{"text": null}', r'b.jsonl:3: "text" is null, not a string'),
        (b'{"text": "\xff"}', r"b.jsonl:3: not valid JSON \(.*utf-8"),
    ],
)
def test_a_bad_jsonl_line_fails_naming_file_and_line_and_writes_nothing(tmp_path, line, needle):
    a = _write_jsonl(tmp_path / "a.jsonl", ["the cat"] * 20)  # fills shards before the error
    b = tmp_path / "b.jsonl"
    raw = line if isinstance(line, bytes) else line.encode()
    b.write_bytes(b'{"text": "dog"}\n{"text": "ran"}\n' + raw + b'\n{"text": "far"}\n')
    with pytest.raises(InputError, match=needle + r".*--bad_lines=skip"):
        _build(tmp_path, [a, str(b)], "jsonl", docs_per_shard=4)
    _nothing_written(tmp_path, ["a.jsonl", "b.jsonl"])
    m = _build(tmp_path, [a, str(b)], "jsonl", bad_lines="skip")
    assert m.num_documents == 23 and m.metadata["records_skipped"] == 1
    assert m.metadata["first_skipped"].startswith(f"{b}:3: ")


def test_invalid_utf8_in_a_txt_file_names_the_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"line one\nline two\nbad \xff byte\n")
    with pytest.raises(InputError, match=rf"{path}:3: invalid UTF-8 .*convert the file to UTF-8"):
        _build(tmp_path, [str(path)], "txt")
    with pytest.raises(InputError, match=rf"{path}:3: invalid UTF-8"):
        list(read_texts([str(path)], "txt", txt_unit="line"))
    _nothing_written(tmp_path, ["a.txt"])


def test_missing_and_empty_input(tmp_path):
    with pytest.raises(InputError, match=r"matches no files; give files or a glob"):
        find_inputs(str(tmp_path / "*.jsonl"))
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(InputError, match="matches only directories"):
        find_inputs(str(tmp_path / "*.jsonl"))
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match=r"holds no non-empty documents \(the files are empty\)"):
        _build(tmp_path, [str(empty)], "jsonl")
    wrong = _write_jsonl(tmp_path / "w.jsonl", ["a", "b"], extra={"body": "x"})
    with pytest.raises(InputError, match=r'2 bad records skipped, the first: .*w.jsonl:1: no "ti'):
        _build(tmp_path, [wrong], "jsonl", text_field="title", bad_lines="skip")
    _nothing_written(tmp_path, ["dir.jsonl", "e.jsonl", "w.jsonl"])


def test_format_inference_and_existing_output(tmp_path):
    assert infer_format(["a.txt", "b.text.gz"]) == "txt"
    assert infer_format(["a.parquet"]) == "parquet"
    with pytest.raises(InputError, match="mix formats"):
        infer_format(["a.txt", "b.jsonl"])
    with pytest.raises(InputError, match=r"cannot tell the format of a.csv"):
        infer_format(["a.csv"])
    a = _write_jsonl(tmp_path / "a.jsonl", ["x"])
    _build(tmp_path, [a], "jsonl")
    with pytest.raises(CorpusError, match="already exists"):
        _build(tmp_path, [a], "jsonl")
    assert read_manifest(tmp_path / "out").num_documents == 1


def test_progress_line_reports_documents_and_tokens_per_second(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", ["the cat"] * 30)
    out = io.StringIO()
    _build(tmp_path, [a], "jsonl", progress=out)
    last = out.getvalue().strip().splitlines()[-1]
    assert last.startswith("build_corpus: 100.0% of") and "30 docs (" in last, last
    assert "/s) | 240 tokens (" in last and " M/s)" in last, last


def test_token_ids_must_fit_the_vocab(tmp_path):
    class Broken(ByteTokenizer):
        vocab_size = 100  # bytes map up to 258: the builder must refuse them

    a = _write_jsonl(tmp_path / "a.jsonl", ["zzz"])
    with pytest.raises(ValueError, match=r"token id 125 outside \[0, vocab_size=100\)"):
        _build(tmp_path, [a], "jsonl", Broken())
    _nothing_written(tmp_path, ["a.jsonl"])


def test_stats_track_bytes_for_progress(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl.gz", ["the cat"] * 1000, opener=gzip.open)
    stats = ReadStats()
    n = sum(1 for _ in read_texts([a], "jsonl", stats=stats))
    assert n == stats.documents == 1000
    assert stats.bytes_done == stats.bytes_total == os.path.getsize(a)
