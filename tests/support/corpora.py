"""Tiny hand-written corpora shared by the data tests, and checks of pipeline batches."""

import numpy as np

EOS = 1

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "x",
    "",  # empty: skipped by write_corpus
    "# a comment that is longer than one packed row, so that it spans several rows\n" * 3,
    "class Point:\n    '''A point in the plane.'''\n\n    x: float = 0.0\n    y: float = 0.0\n",
    "print('héllo wörld 🙂')\n",
]

# Documents whose tokens say where they come from: document d holds ids 1000*(d+1) + 0, 1, ...
# (all distinct), so a test can tell the document and offset of every non-EOS token.
UNIQUE_VOCAB = 1 << 20
UNIQUE_LENGTHS = [3, 1, 17, 40, 2, 9, 25, 6, 64, 11, 5, 30, 1, 8, 19, 70, 4, 13, 7, 22]


def unique_docs(lengths=UNIQUE_LENGTHS, base=0) -> list[np.ndarray]:
    """Document d: ids 1000*(base + d + 1) + [0, 1, ..., n)."""
    return [1000 * (base + d + 1) + np.arange(n) for d, n in enumerate(lengths)]


def doc_and_offset(token):
    return int(token) // 1000 - 1, int(token) % 1000


def take(it, n):
    return [next(it) for _ in range(n)]


def rows_of(batches):
    """The rows of consecutive batches, concatenated: dict of [sum R, L] (source_ids [sum R])."""
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def lengths_by_id(lengths=UNIQUE_LENGTHS, base=0) -> dict[int, int]:
    """{document id (token // 1000 - 1): length} of `unique_docs(lengths, base)`."""
    return {base + d: n for d, n in enumerate(lengths)}


def check_batch(batch, rows, seq_len, lengths=None):
    """Every invariant of one batch of unique-token corpora; `lengths`: lengths_by_id(...) of
    every corpus the batch may come from (default: the unique corpus)."""
    lengths = lengths or lengths_by_id()
    for key in ("tokens", "labels", "segment_ids", "positions"):
        assert batch[key].shape == (rows, seq_len) and batch[key].dtype == np.int32, key
    assert batch["source_ids"].shape == (rows,) and batch["source_ids"].dtype == np.int32
    for tok, lab, seg, pos in zip(
        batch["tokens"], batch["labels"], batch["segment_ids"], batch["positions"], strict=True
    ):
        valid = seg > 0
        n = int(valid.sum())
        assert valid[:n].all(), "padding only at the end of a row"
        assert (tok[n:] == 0).all() and (lab[n:] == -1).all() and (pos[n:] == 0).all()
        if n:
            assert seg[0] == 1 and pos[0] == 0
        for t in range(n):
            if tok[t] == EOS:
                assert lab[t] == -1, "EOS never predicts the next document"
            else:
                d, k = doc_and_offset(tok[t])
                true_next = tok[t] + 1 if k + 1 < lengths[d] else EOS
                assert lab[t] == true_next, "label = the true next token of the document"
            if t + 1 < n:
                same = seg[t + 1] == seg[t]
                if lab[t] != -1:
                    assert same and tok[t + 1] == lab[t], "labels never cross documents"
                assert same == (tok[t] != EOS), "a segment ends exactly after EOS"
                if same:
                    assert pos[t + 1] == pos[t] + 1
                else:
                    assert seg[t + 1] == seg[t] + 1 and pos[t + 1] == 0
                    assert doc_and_offset(tok[t + 1])[1] == 0 or tok[t + 1] == EOS


def documents_in_order(rows, whole=False):
    """The documents of a run of rows (rows_of), in stream order; asserts each is contiguous and
    exact (a document continues from row to row). A trailing partial document is dropped unless
    whole=True, which asserts there is none."""
    stream = rows["tokens"][rows["segment_ids"] > 0]
    pieces = np.split(stream, np.flatnonzero(stream == EOS) + 1)
    if whole:
        assert len(pieces[-1]) == 0, "the run ends with a whole document"
    order = []
    for piece in pieces[:-1]:
        d, k = doc_and_offset(piece[0])  # no document is empty, so piece[0] is not EOS
        assert k == 0
        np.testing.assert_array_equal(piece[:-1], 1000 * (d + 1) + np.arange(len(piece) - 1))
        order.append(d)
    return order


WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "héllo", "🙂"]


def word_tokenizer(path, specials=("</s>",), bos=False):
    """A Hugging Face WordLevel tokenizer.json at `path`: one id per whitespace-separated word
    (unknown words -> [UNK]), so `len(text.split())` counts its tokens independently. With
    bos=True its post-processor would add a <s> (encoding must not use it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[UNK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(specials) + (["<s>"] if bos else []))
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    tok.save(str(path))
    return str(path)


def records(corpus_dir, manifest):
    """Every record of a corpus, read with ArrayRecord directly (not with lingjax's reader)."""
    import os

    from array_record.python.array_record_module import ArrayRecordReader

    out = []
    for shard in manifest.shards:
        reader = ArrayRecordReader(os.path.join(corpus_dir, shard.file))
        dtype = np.dtype(manifest.dtype).newbyteorder("<")
        out += [np.frombuffer(r, dtype) for r in reader.read_all()]
        reader.close()
    return out


# Three unique-token corpora of different document lengths (so token and document shares
# differ): corpus i holds documents with ids 1000 * (base_i + d + 1) + offset.
MIXTURE_BASES = {"code": 0, "math": 100, "web": 200}
_rng = np.random.default_rng(0)
MIXTURE_LENGTHS = {
    "code": [int(n) for n in _rng.integers(20, 120, 60)],
    "math": [int(n) for n in _rng.integers(1, 12, 90)],
    "web": [int(n) for n in _rng.integers(5, 40, 80)],
}

# {document id: length} over all three (what check_batch needs).
MIXTURE_DOC_LENGTHS = {
    d: n
    for name, base in MIXTURE_BASES.items()
    for d, n in lengths_by_id(MIXTURE_LENGTHS[name], base).items()
}
