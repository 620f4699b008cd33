"""write_corpus / read_manifest / default_corpus: counts, atomicity, errors."""

import json
import os
import pathlib
import sys
import sysconfig

import numpy as np
import pytest

from lingjax.data import ByteTokenizer, CorpusError, default_corpus, read_manifest, write_corpus
from lingjax.data.corpus import read_document_lengths
from tests.support.corpora import TEXTS, records


def test_manifest_counts_andrecords(text_corpus):
    tok = ByteTokenizer()
    m = read_manifest(text_corpus)
    nonempty = [t for t in TEXTS if t]
    lengths = [len(t.encode()) + 1 for t in nonempty]  # + EOS
    assert (m.tokenizer, m.vocab_size, m.dtype, m.eos_id, m.domain) == (
        "byte",
        259,
        "uint16",
        1,
        "code",
    )
    assert [s.documents for s in m.shards] == [2, 2, 1]
    assert [s.file for s in m.shards] == [f"shard-0000{i}.array_record" for i in range(3)]
    assert [s.tokens for s in m.shards] == [sum(lengths[0:2]), sum(lengths[2:4]), lengths[4]]
    assert (m.num_documents, m.num_tokens) == (len(nonempty), sum(lengths))
    raw = json.loads((text_corpus / "manifest.json").read_text())
    assert (raw["num_documents"], raw["num_tokens"]) == (m.num_documents, m.num_tokens)
    recs = records(text_corpus, m)
    assert [tok.decode(r) for r in recs] == nonempty
    assert all(r[-1] == tok.EOS for r in recs)
    np.testing.assert_array_equal(read_document_lengths(text_corpus, m), lengths)
    # Nothing but the corpus files: no temporary directory left beside it.
    assert sorted(os.listdir(text_corpus.parent)) == ["text"]


def test_large_vocab_uses_uint32(tmp_path):
    docs = [np.array([70000, 5, 123456])]
    m = write_corpus(docs, tmp_path / "c", tokenizer="t", vocab_size=200000, domain="d")
    assert m.dtype == "uint32"
    np.testing.assert_array_equal(records(tmp_path / "c", m)[0], [70000, 5, 123456, 1])


def test_failed_build_leaves_nothing(tmp_path):
    def docs():
        yield np.arange(10)
        raise RuntimeError("tokenizer crashed")

    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        write_corpus(docs(), tmp_path / "c", tokenizer="t", vocab_size=259, domain="d")
    assert os.listdir(tmp_path) == []


def test_bad_documents_raise_and_leave_nothing(tmp_path):
    with pytest.raises(
        ValueError, match=r"document 1 has token id 259 outside \[0, vocab_size=259"
    ):
        write_corpus(
            [np.arange(3), np.array([259])],
            tmp_path / "c",
            tokenizer="t",
            vocab_size=259,
            domain="d",
        )
    with pytest.raises(ValueError, match="1-D integer"):
        write_corpus(
            [np.zeros((2, 2), int)], tmp_path / "c", tokenizer="t", vocab_size=9, domain="d"
        )
    with pytest.raises(CorpusError, match="no non-empty documents"):
        write_corpus([np.array([], int)], tmp_path / "c", tokenizer="t", vocab_size=9, domain="d")
    assert os.listdir(tmp_path) == []


def test_existing_destination_is_refused(text_corpus):
    with pytest.raises(CorpusError, match="already exists"):
        write_corpus([np.arange(3)], text_corpus, tokenizer="t", vocab_size=9, domain="d")
    m = write_corpus(
        [np.arange(3)], text_corpus, tokenizer="t", vocab_size=9, domain="d", exist_ok=True
    )
    assert m == read_manifest(text_corpus)


@pytest.mark.parametrize("exist_ok", [False, True])
def test_concurrent_builder_keeps_the_first_finished(tmp_path, exist_ok):
    out = tmp_path / "c"

    def docs():
        yield np.arange(5)
        # Another process finishes the same corpus while this build is still running.
        write_corpus([np.arange(7)], out, tokenizer="other", vocab_size=9, domain="d")
        yield np.arange(6)

    if exist_ok:
        m = write_corpus(docs(), out, tokenizer="t", vocab_size=9, domain="d", exist_ok=True)
        assert m.tokenizer == "other"
    else:
        with pytest.raises(CorpusError, match="appeared while this corpus was being built"):
            write_corpus(docs(), out, tokenizer="t", vocab_size=9, domain="d")
    m = read_manifest(out)
    assert (m.tokenizer, m.num_documents, m.num_tokens) == ("other", 1, 8)
    assert os.listdir(tmp_path) == ["c"]  # our temporary copy was discarded


def test_read_manifest_errors(tmp_path, text_corpus):
    with pytest.raises(CorpusError, match=r"does not exist; build one with .*build_corpus"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"manifest.json is missing: .* not a finished corpus"):
        read_manifest(tmp_path / "empty")

    def corrupt(text):
        bad = tmp_path / "bad"
        bad.mkdir(exist_ok=True)
        (bad / "manifest.json").write_text(text)
        return bad

    with pytest.raises(CorpusError, match=r"manifest.json is not valid JSON \(line 1.*rebuild"):
        read_manifest(corrupt("{not json"))
    with pytest.raises(CorpusError, match="not a lingjax corpus manifest"):
        read_manifest(corrupt('{"hello": 1}'))
    raw = json.loads((text_corpus / "manifest.json").read_text())
    with pytest.raises(CorpusError, match="format_version=99"):
        read_manifest(corrupt(json.dumps({**raw, "format_version": 99})))
    # A version-1 manifest (before tokenizer hashes) is refused with the fix, not misread.
    with pytest.raises(CorpusError, match=r"format_version=1; .*Rebuild the corpus"):
        read_manifest(corrupt(json.dumps({**raw, "format_version": 1})))
    with pytest.raises(CorpusError, match="malformed"):
        read_manifest(corrupt(json.dumps({**raw, "shards": [{"file": "x"}]})))
    (text_corpus / "shard-00001.array_record").unlink()
    with pytest.raises(CorpusError, match=r"shard-00001.array_record is missing: .*incomplete"):
        read_manifest(text_corpus)


def _stdlib_files(root):
    """The stdlib's non-empty *.py files, found without lingjax's code."""
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if "site-packages" in rel or "dist-packages" in rel or not path.is_file():
            continue
        if path.stat().st_size:
            yield path


def _independent_stdlib_count():
    sizes = [p.stat().st_size for p in _stdlib_files(pathlib.Path(sysconfig.get_paths()["stdlib"]))]
    return len(sizes), sum(sizes) + len(sizes)  # + one EOS per document


def test_default_corpus_build_and_reuse(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LINGJAX_CACHE", str(tmp_path / "env-cache"))
    path = default_corpus()
    major, minor = sys.version_info[:2]
    assert path == str(tmp_path / "env-cache" / f"default-corpus-py{major}{minor}-byte-v2")
    out = capsys.readouterr().out
    m = read_manifest(path)
    assert "building the default corpus" in out and f"{m.num_documents} documents" in out
    assert out.count("\n") == 1, "one line"
    assert (m.num_documents, m.num_tokens) == _independent_stdlib_count()
    assert (m.tokenizer, m.tokenizer_hash, m.vocab_size, m.domain) == (
        "byte",
        ByteTokenizer.sha256,
        259,
        "code",
    )
    # Reused: by the explicit cache_dir too, without building or printing again.
    assert default_corpus(str(tmp_path / "env-cache")) == path
    assert capsys.readouterr().out == ""
    # Records are the files' exact bytes, in sorted relative-path order.
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    first = min(_stdlib_files(root), key=lambda p: p.relative_to(root).as_posix())
    record = records(path, m)[0]
    assert ByteTokenizer().decode(record) == first.read_bytes().decode("utf-8", "replace")
