"""Random access to a corpus' documents, and the seeded permutation every shuffle uses."""

from __future__ import annotations

import os

import grain
import numpy as np

from lingjax.data.corpus import CorpusError, Manifest, read_document_lengths, read_manifest


class CorpusDocuments:
    """Random access to a corpus' documents as int arrays (EOS included).

    Picklable for Grain workers: the ArrayRecord readers reopen lazily in each process.
    """

    def __init__(self, corpus_dir: str | os.PathLike, manifest: Manifest | None = None):
        self.corpus_dir = os.path.abspath(os.fspath(corpus_dir))
        self.manifest = manifest or read_manifest(self.corpus_dir)
        self.lengths = read_document_lengths(self.corpus_dir, self.manifest)  # int64 [N]
        self._dtype = np.dtype(self.manifest.dtype).newbyteorder("<")
        # "path[0:n]" tells ArrayRecordDataSource the record count, so it opens no file here.
        self._source = grain.sources.ArrayRecordDataSource(
            [
                f"{os.path.join(self.corpus_dir, s.file)}[0:{s.documents}]"
                for s in self.manifest.shards
            ]
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> np.ndarray:
        """Document `index` (record order over all shards): its ids, uint16/uint32 [length]."""
        ids = np.frombuffer(self._source[index], dtype=self._dtype)
        if ids.size != self.lengths[index]:
            raise CorpusError(
                f"document {index} of {self.corpus_dir} has {ids.size} tokens but its lengths "
                f"file says {self.lengths[index]}; the corpus is corrupt, rebuild it"
            )
        # The model's vocab was checked against the manifest; an id past the manifest's bound
        # means a damaged or hand-edited shard, which would index past the embedding table.
        if ids.size and int(ids.max()) >= self.manifest.vocab_size:
            raise CorpusError(
                f"document {index} of {self.corpus_dir} has token id {int(ids.max())} >= the "
                f"manifest's vocab_size {self.manifest.vocab_size}; the corpus is corrupt, "
                "rebuild it"
            )
        return ids

    def fingerprint(self) -> str:
        """What identifies the corpus' content (not its path, so a moved corpus still resumes)."""
        m = self.manifest
        return (
            f"{m.tokenizer}:{m.tokenizer_hash[:12]}/v{m.vocab_size}/{m.num_documents}docs/"
            f"{m.num_tokens}tok"
        )


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A seeded permutation of range(n) for `epoch`: int64 [n].

    Sorting splitmix64 hashes of the indices gives a uniform random order that depends only on
    (seed, epoch), not on numpy's generator algorithms, so resumed runs reorder identically on
    any numpy version.
    """
    key = _mix64(np.array([seed & _MASK64], np.uint64))
    key = _mix64(key ^ np.uint64(epoch & _MASK64))
    return np.argsort(_mix64(np.arange(n, dtype=np.uint64) ^ key), kind="stable")


_MASK64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser; uint64 arithmetic wraps, as the hash wants.
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
