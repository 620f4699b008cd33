"""ByteTokenizer: ids, round trip, special handling."""

import numpy as np

from lingjax.data import ByteTokenizer


def test_ids_and_vocab():
    tok = ByteTokenizer()
    assert (tok.PAD, tok.EOS, tok.BOS, tok.vocab_size, tok.name) == (0, 1, 2, 259, "byte")
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
