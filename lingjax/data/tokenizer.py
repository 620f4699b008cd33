"""The built-in byte tokenizer: every UTF-8 byte is one token, plus three special ids.

    ids: PAD = 0, EOS = 1, BOS = 2, byte b -> b + 3        vocab_size = 259

It needs no files and no training, so the default corpus and the tests work everywhere. Corpora
record the tokenizer's `name` in their manifest; a later issue adds Hugging Face tokenizers with
the same `encode`/`decode` surface.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids (`PAD`, `EOS`, `BOS`)."""

    name = "byte"  # written to corpus manifests
    PAD = 0
    EOS = 1
    BOS = 2
    OFFSET = 3  # id of byte 0
    vocab_size = 256 + OFFSET

    @property
    def pad_id(self) -> int:
        return self.PAD

    @property
    def eos_id(self) -> int:
        return self.EOS

    @property
    def bos_id(self) -> int:
        return self.BOS

    def encode(self, text: str) -> np.ndarray:
        """`text` as UTF-8 byte ids: int32 [len(text.encode())], no specials added."""
        return self.encode_bytes(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """Raw bytes (any encoding, e.g. a source file read as-is) as ids: int32 [len(data)]."""
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32) + self.OFFSET

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Ids back to text. Specials and ids outside the byte range (a model whose vocab is
        larger than 259 can sample those) are skipped; invalid UTF-8 becomes U+FFFD."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        arr = arr[(arr >= self.OFFSET) & (arr < self.vocab_size)]
        return (arr - self.OFFSET).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"
