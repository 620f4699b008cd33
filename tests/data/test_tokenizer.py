"""Tokenizers: the byte tokenizer (ids, round trip, specials) and tokenizer.json files (EOS,
hash, vocab size, errors)."""

import hashlib
import json
import pathlib

import numpy as np
import pytest

from lingjax.data import ByteTokenizer, HFTokenizer, TokenizerError, load_tokenizer
from lingjax.data.tokenizer import (
    recorded_tokenizer,
    tokenizer_fingerprint,
    tokenizer_record,
    write_tokenizer_record,
)
from tests.support.corpora import WORDS, word_tokenizer


def test_ids_and_vocab():
    tok = ByteTokenizer()
    assert (tok.PAD, tok.EOS, tok.BOS, tok.vocab_size, tok.kind) == (0, 1, 2, 259, "byte")
    assert tok.encode_batch(["A", ""])[0].tolist() == [68] and len(tok.sha256) == 64
    np.testing.assert_array_equal(tok.encode("A\x00"), [65 + 3, 3])
    assert tok.encode("").dtype == np.int32 and tok.encode("").shape == (0,)


def test_round_trip_unicode():
    tok = ByteTokenizer()
    text = "def f(x):\n    return x  # héllo, 世界, 🙂\n"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text.encode("utf-8"))
    assert ids.min() >= 3 and ids.max() < 259
    assert tok.decode(ids) == text


def test_decode_skips_specials_and_out_of_range_ids():
    tok = ByteTokenizer()
    ids = [tok.BOS, *tok.encode("ab"), tok.EOS, tok.PAD, 300, *tok.encode("c")]
    assert tok.decode(ids) == "abc"
    assert tok.decode(np.array(ids, np.int64)) == "abc"
    assert tok.decode([]) == ""


def test_invalid_utf8_is_replaced():
    tok = ByteTokenizer()
    ids = tok.encode_bytes(b"a\xffb")
    assert tok.decode(ids) == "a\ufffdb"


# ---------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json files


def test_hf_tokenizer_ids_eos_hash_and_no_specials(tmp_path):
    path = word_tokenizer(tmp_path / "tokenizer.json", bos=True)
    tok = load_tokenizer(path)
    assert isinstance(tok, HFTokenizer) and tok.kind == "hf"
    assert tok.sha256 == hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
    assert tokenizer_fingerprint(path) == ("hf", tok.sha256)
    assert (tok.eos_token, tok.eos_id, tok.vocab_size) == ("</s>", len(WORDS) + 1, len(WORDS) + 3)
    texts = ["the cat sat", "dog  ran\nfar away", "", "héllo 🙂"]
    batch = tok.encode_batch(texts)
    assert [len(ids) for ids in batch] == [len(t.split()) for t in texts], "no <s> added"
    for text, ids in zip(texts, batch, strict=True):
        assert ids.dtype == np.int32
        np.testing.assert_array_equal(ids, tok.encode(text))
    assert batch[1].tolist() == [6, 7, 8, 0]  # dog ran far [UNK]
    assert tok.decode(batch[0]) == "the cat sat"
    other = word_tokenizer(tmp_path / "other.json", specials=("</s>", "<pad>"))
    assert load_tokenizer(other).sha256 != tok.sha256


def test_hf_eos_is_found_or_named(tmp_path):
    ambiguous = word_tokenizer(tmp_path / "a.json", specials=("</s>", "<|endoftext|>"))
    with pytest.raises(
        TokenizerError, match=r"several candidates: '</s>', '<\|endoftext\|>'.*--eos_token"
    ):
        load_tokenizer(ambiguous)
    assert load_tokenizer(ambiguous, "<|endoftext|>").eos_id == len(WORDS) + 2
    with pytest.raises(TokenizerError, match=r"has no token '<eot>'; pass --eos_token with one"):
        load_tokenizer(ambiguous, "<eot>")
    none = word_tokenizer(tmp_path / "n.json", specials=("<pad>",))
    with pytest.raises(TokenizerError, match="no usual EOS token: '<pad>'"):
        load_tokenizer(none)
    # A tokenizer_config.json beside the file (as Hugging Face saves them) settles it.
    d = tmp_path / "model"
    d.mkdir()
    path = word_tokenizer(d / "tokenizer.json", specials=("</s>", "<|endoftext|>"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    assert load_tokenizer(path).eos_token == "</s>"


def test_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist; pass the path of a Hugging Face"):
        load_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(TokenizerError, match=r"is not a Hugging Face tokenizer.json"):
        load_tokenizer(str(bad))
    with pytest.raises(TokenizerError, match=r"only applies to a tokenizer.json"):
        load_tokenizer("byte", "</s>")
    with pytest.raises(TokenizerError, match=r"data.tokenizer"):
        tokenizer_fingerprint(str(tmp_path / "missing.json"))
    assert tokenizer_fingerprint("byte") == ("byte", ByteTokenizer.sha256)
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)


def test_an_explicit_tokenizer_is_checked_against_the_record(tmp_path):
    path = word_tokenizer(tmp_path / "tokenizer.json", bos=True)
    hf = load_tokenizer(path)
    cases = {
        "byte-unhashed": {"kind": "byte", "sha256": ""},  # a corpus written without a hash
        "byte": tokenizer_record(ByteTokenizer()),
        "hf": tokenizer_record(hf),
        "hf-unhashed": {"kind": "hf", "sha256": ""},
    }
    for name, record in cases.items():
        d = tmp_path / name
        d.mkdir()
        write_tokenizer_record(str(d), {**tokenizer_record(ByteTokenizer()), **record})
    assert isinstance(recorded_tokenizer(tmp_path / "byte-unhashed", "byte"), ByteTokenizer)
    assert isinstance(recorded_tokenizer(tmp_path / "byte", "byte"), ByteTokenizer)
    assert recorded_tokenizer(tmp_path / "hf", path).sha256 == hf.sha256
    assert recorded_tokenizer(tmp_path / "hf-unhashed", path).sha256 == hf.sha256
    for name, spec in [("hf", "byte"), ("byte", path), ("byte-unhashed", path)]:
        with pytest.raises(TokenizerError, match="drop --tokenizer"):
            recorded_tokenizer(tmp_path / name, spec)
    other = word_tokenizer(tmp_path / "other.json", specials=("</s>", "<pad>"))
    with pytest.raises(TokenizerError, match="drop --tokenizer"):
        recorded_tokenizer(tmp_path / "hf", other)
