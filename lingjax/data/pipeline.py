"""Grain training pipeline: corpus -> seeded shuffle -> per-process share -> packing -> batches.

    it = make_train_iterator(cfg.data, seq_len=256, batch_size=8, vocab_size=512)
    batch = next(it)                # dict of int32 [8, 256]: tokens, labels, segment_ids, positions
    state = it.get_state()          # small JSON-able dict; saved with the checkpoint
    it2 = make_train_iterator(...); it2.set_state(state)   # continues exactly where `it` was

How a process's batch sequence is defined (everything is a pure function of the corpus, the
seed and the shapes, so any batch can be computed directly from (epoch, batch index)):

1. Epoch e orders all N documents by a seeded hash permutation (a new order every epoch, the
   same on every process and every numpy version).
2. Process p of P takes documents p, p+P, p+2P, ... of that order: disjoint shares that
   together hold every document, each epoch a different random split.
3. The share's documents, each ending with EOS, form one token stream; batch j of the epoch is
   the stream window [j*R*L, (j+1)*R*L + 1) packed into R rows of L inputs (packing.py:
   concatenate-then-split, rows overlapping by one token). The last batch of an epoch is padded,
   so every token of the share is an input exactly once per epoch, then the next epoch begins.

Document lengths are stored beside the shards, so planning an epoch reads no records, and the
iterator state is just (epoch, batch index). With `num_workers` W > 0, Grain worker w makes
batches w, w+W, ... and Grain interleaves the workers round-robin: the batches are the same for
any W (a checkpointed state only resumes under the same W, since Grain's state has one entry per
worker).

Memory: about 24 bytes per corpus document per process (lengths, the epoch's order and stream
offsets, two epochs cached), so up to ~10^8 documents per corpus.

Letters: R rows per process batch, L sequence length, N documents.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import grain
import numpy as np

from lingjax.data.corpus import (
    CorpusError,
    Manifest,
    default_corpus,
    read_document_lengths,
    read_manifest,
)
from lingjax.data.packing import pack_window

if TYPE_CHECKING:
    from lingjax.configs import DataConfig


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
        return ids

    def fingerprint(self) -> str:
        m = self.manifest
        return f"{m.tokenizer}/v{m.vocab_size}/{m.num_documents}docs/{m.num_tokens}tok"


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


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """One process's stream for one epoch."""

    docs: np.ndarray  # int64 [n]: document indices in stream order
    ends: np.ndarray  # int64 [n]: stream offset just past each document
    num_batches: int  # ceil(stream tokens / (R*L)); the last one is padded


class PackedBatchDataset(grain.IterDataset):
    """Packed batches of one process, forever (or `num_epochs`); see the module docstring.

    Elements: dict of int32 [R, L] arrays `tokens`, `labels`, `segment_ids`, `positions`
    (packing.py). `shuffle=False, num_epochs=1` gives every document once in corpus order, the
    shape an evaluation split wants.
    """

    def __init__(
        self,
        documents: CorpusDocuments,
        *,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        super().__init__()
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be >= 1")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if len(documents) < process_count:
            raise CorpusError(
                f"{documents.corpus_dir} has {len(documents)} documents, fewer than the "
                f"{process_count} processes that share it; use a larger corpus"
            )
        self.documents = documents
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
        self.process_index, self.process_count = process_index, process_count
        self.worker_index, self.worker_count = 0, 1

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Called by Grain's mp_prefetch in each worker with slice(w, None, W): the worker makes
        batches w, w+W, ... of the sequence (Grain interleaves them back round-robin). Batches
        are never split by document ranges, so `sequential_slice` is ignored."""
        del sequential_slice
        start, step = sl.start or 0, sl.step or 1
        self.worker_index += self.worker_count * start
        self.worker_count *= step

    def stream_id(self) -> str:
        """What a checkpointed state is valid for (checked by `set_state`)."""
        return (
            f"corpus={self.documents.fingerprint()} seq_len={self.seq_len} "
            f"rows={self.batch_size} seed={self.seed} shuffle={self.shuffle} "
            f"process={self.process_index}/{self.process_count}"
        )

    def epoch_plan(self, epoch: int) -> EpochPlan:
        n = len(self.documents)
        order = permutation(n, self.seed, epoch) if self.shuffle else np.arange(n)
        docs = order[self.process_index :: self.process_count]
        ends = np.cumsum(self.documents.lengths[docs])
        rows_tokens = self.batch_size * self.seq_len
        return EpochPlan(docs, ends, -(-int(ends[-1]) // rows_tokens))

    def __iter__(self) -> PackedBatchIterator:
        return PackedBatchIterator(self)

    def __str__(self) -> str:
        return (
            f"PackedBatchDataset({self.stream_id()} worker={self.worker_index}/{self.worker_count})"
        )


class PackedBatchIterator(grain.DatasetIterator):
    """Iterator of `PackedBatchDataset`; state = the (epoch, batch) it makes next."""

    def __init__(self, ds: PackedBatchDataset):
        super().__init__()
        self._ds = ds
        self._plans: dict[int, EpochPlan] = {}
        # Documents read for the previous batch: a document longer than a batch spans several,
        # and re-reading (and decompressing) it for each would multiply the IO.
        self._cache: dict[int, np.ndarray] = {}
        self._epoch, self._batch = self._advance(0, 0, ds.worker_index)

    def _plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            if len(self._plans) >= 2:  # the current epoch and the next are all we need
                del self._plans[min(self._plans)]
            self._plans[epoch] = self._ds.epoch_plan(epoch)
        return self._plans[epoch]

    def _advance(self, epoch: int, batch: int, steps: int) -> tuple[int, int]:
        batch += steps
        while self._ds.num_epochs is None or epoch < self._ds.num_epochs:
            num_batches = self._plan(epoch).num_batches
            if batch < num_batches:
                break
            batch -= num_batches
            epoch += 1
        return epoch, batch

    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        ds = self._ds
        if ds.num_epochs is not None and self._epoch >= ds.num_epochs:
            raise StopIteration
        plan = self._plan(self._epoch)
        window = ds.batch_size * ds.seq_len
        batch = pack_window(
            self._pieces(plan, self._batch * window, window + 1), ds.batch_size, ds.seq_len
        )
        self._epoch, self._batch = self._advance(self._epoch, self._batch, ds.worker_count)
        return batch

    def _pieces(self, plan: EpochPlan, start: int, size: int) -> list[np.ndarray]:
        """The document pieces covering stream tokens [start, start + size) of the epoch."""
        stop = min(start + size, int(plan.ends[-1]))
        first = int(np.searchsorted(plan.ends, start, side="right"))
        last = min(int(np.searchsorted(plan.ends, stop, side="left")) + 1, len(plan.docs))
        pieces, cache = [], {}
        for i in range(first, last):
            doc = int(plan.docs[i])
            ids = self._cache.get(doc)
            if ids is None:
                ids = self._ds.documents[doc]
            cache[doc] = ids
            doc_start = int(plan.ends[i]) - ids.size
            pieces.append(ids[max(start - doc_start, 0) : stop - doc_start])
        self._cache = cache
        return pieces

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "batch": self._batch, "stream": self._ds.stream_id()}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("stream") != self._ds.stream_id():
            raise ValueError(
                "this data-iterator state belongs to another data stream:\n"
                f"  state:    {state.get('stream')}\n  iterator: {self._ds.stream_id()}\n"
                "resume with the same corpus, seed, seq_len, batch size and process count, or "
                "start the data iterator afresh (drop its checkpointed state)"
            )
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        self._cache = {}

    def __str__(self) -> str:
        return f"PackedBatchIterator({self._ds})"


def make_train_iterator(
    data_cfg: DataConfig,
    *,
    seq_len: int,
    batch_size: int,
    vocab_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """The training batches of this process, forever.

    Args:
      data_cfg: `lingjax.configs.DataConfig` (corpus, cache_dir, seed, num_workers, prefetch).
      seq_len: L, input tokens per row.
      batch_size: global batch, in rows; each process gets batch_size // process_count.
      vocab_size: the model's vocabulary; the corpus' ids must fit in it.
      process_index, process_count: this process among those sharing the data (jax.process_*).

    Returns:
      a checkpointable Grain iterator (`get_state()` / `set_state()`; `close()` it when done)
      of dicts of int32 [batch_size // process_count, seq_len]: tokens, labels (-1 = ignore),
      segment_ids (0 = padding), positions. See packing.py for their exact meaning.
    """
    if process_count < 1 or batch_size % process_count:
        raise ValueError(
            f"train.batch_size={batch_size} must be a positive multiple of the number of "
            f"processes ({process_count}); each process loads batch_size // process_count rows"
        )
    corpus_dir = data_cfg.corpus or default_corpus(data_cfg.cache_dir)
    manifest = read_manifest(corpus_dir)
    if manifest.vocab_size > vocab_size:
        raise CorpusError(
            f"corpus {corpus_dir} uses token ids up to {manifest.vocab_size - 1} "
            f"(tokenizer {manifest.tokenizer!r}, vocab_size {manifest.vocab_size}) but the model "
            f"has vocab_size {vocab_size}; set model.vocab_size >= {manifest.vocab_size} or use a "
            f"corpus built with the model's tokenizer"
        )
    ds: grain.IterDataset = PackedBatchDataset(
        CorpusDocuments(corpus_dir, manifest),
        seq_len=seq_len,
        batch_size=batch_size // process_count,
        seed=data_cfg.seed,
        process_index=process_index,
        process_count=process_count,
    )
    if data_cfg.num_workers > 0:
        _mark_absl_flags_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=data_cfg.num_workers,
                per_worker_buffer_size=max(1, data_cfg.prefetch),
            )
        )
    elif data_cfg.prefetch > 0:
        # A background thread packs the next batches while the caller works (a jitted step
        # releases the GIL); its state is that of the last batch handed out, so resume is exact.
        ds = grain.experimental.ThreadPrefetchIterDataset(
            ds, prefetch_buffer_size=data_cfg.prefetch
        )
    return iter(ds)


def _mark_absl_flags_parsed() -> None:
    # Grain workers read absl flags; outside absl.app.run (pytest, notebooks) they are unparsed
    # and the workers would fail. Marking them parsed keeps every flag at its default.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
