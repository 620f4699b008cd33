"""Grain pipelines: corpora -> seeded shuffle -> per-process share -> row packing -> mixed
batches, and the held-out validation batches.

    it = make_train_iterator(cfg.data, seq_len=256, batch_size=8, vocab_size=512)
    batch = next(it)        # tokens, labels, segment_ids, positions: int32 [8, 256];
                            # source_ids: int32 [8], the mixture source of each row
    state = it.get_state()  # small JSON-able dict (below); saved with the checkpoint
    it2 = make_train_iterator(...); it2.set_state(state)   # continues exactly where `it` was

How a process's batch sequence is defined (a pure function of the corpora, the seed, the
shapes and the process count, so any batch can be computed from the iterator state):

1. Each source (a corpus, restricted to its training documents; sources.py) has its own
   stream per epoch: all its documents ordered by a seeded hash permutation (a new order every
   epoch, the same on every process), of which process p of P takes documents p, p+P, p+2P, ...
   (disjoint shares that together hold every document). The share's documents, each ending
   with EOS, form one token stream cut into rows of L inputs (packing.py); the last row of an
   epoch is padded, so every token of the share is an input exactly once per epoch, then the
   source's next epoch begins. Sources cycle through their epochs independently.
2. Row r of batch j is row slot s = j*R + r; the mixture schedule (sources.py) picks the source
   of each slot in proportion to the weights, and the slot takes that source's next row.

Iterator state (`get_state()`; a JSON-able dict of a few hundred bytes):
    {"batch": j,                                # the next batch to make
     "cursors": {source: [epoch, row], ...},    # each source's next row
     "stream": "seq_len=... sources=[...]"}     # what it is valid for; set_state checks it
Save it with the checkpoint (`json.dumps(it.get_state())`, or with Orbax
`grain.checkpoint.CheckpointSave(it)`), restore with `set_state`. With `num_workers` W > 0 Grain
worker w makes batches w, w+W, ... and interleaves them round-robin: the batches are the same
for any W, and Grain's state wraps one such dict per worker (so it resumes only under the same
W).

Memory: about 24 bytes per corpus document per process (lengths, the epoch's order and stream
offsets, two epochs cached), so up to ~10^8 documents per corpus.

Letters: R rows per process batch, L sequence length, K sources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grain
import numpy as np

from lingjax.data.corpus import CorpusError
from lingjax.data.documents import permutation
from lingjax.data.packing import pack_window
from lingjax.data.sources import MixtureSchedule, Source, open_sources

if TYPE_CHECKING:
    from lingjax.configs import CorpusSpec, DataConfig

# The batch entries the model reads; `source_ids` is bookkeeping for the host (MixtureMeter).
MODEL_INPUTS = ("tokens", "labels", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """One process's stream of one source for one epoch."""

    docs: np.ndarray  # int64 [n]: document indices in stream order
    ends: np.ndarray  # int64 [n]: stream offset just past each document
    num_rows: int  # ceil(stream tokens / L); the last one is padded


class RowStream:
    """The rows of one source for one process: row k of epoch e, and cursor arithmetic."""

    def __init__(
        self,
        source: Source,
        *,
        seq_len: int,
        shuffle: bool,
        num_epochs: int | None,
        process_index: int,
        process_count: int,
    ):
        self.source, self.seq_len, self.shuffle = source, seq_len, shuffle
        self.num_epochs = num_epochs
        self.process_index, self.process_count = process_index, process_count
        self._plans: dict[int, EpochPlan] = {}
        # Documents read for the previous rows: a document longer than a batch's rows spans
        # several batches, and re-reading (and decompressing) it for each would multiply IO.
        self._cache: dict[int, np.ndarray] = {}

    def plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            if len(self._plans) >= 2:  # the current epoch and the next are all we need
                del self._plans[min(self._plans)]
            pool = self.source.pool
            order = permutation(len(pool), self.source.seed, epoch) if self.shuffle else None
            docs = (pool if order is None else pool[order])[
                self.process_index :: self.process_count
            ]
            ends = np.cumsum(self.source.documents.lengths[docs])
            self._plans[epoch] = EpochPlan(docs, ends, -(-int(ends[-1]) // self.seq_len))
        return self._plans[epoch]

    def clear_cache(self) -> None:
        self._cache = {}

    def exhausted(self, epoch: int) -> bool:
        return self.num_epochs is not None and epoch >= self.num_epochs

    def advance(self, epoch: int, row: int, steps: int) -> tuple[int, int]:
        """The cursor `steps` rows after (epoch, row); (num_epochs, 0) once past the end."""
        row += steps
        while not self.exhausted(epoch):
            num_rows = self.plan(epoch).num_rows
            if row < num_rows:
                return epoch, row
            row -= num_rows
            epoch += 1
        return epoch, 0

    def rows(self, epoch: int, row: int, count: int) -> dict[str, np.ndarray]:
        """Rows [row, row + count) of `epoch` packed (packing.py): int32 [count, L] arrays.
        The rows must lie in the epoch (row + count <= num_rows), or the stream be exhausted
        (then they are padding)."""
        if self.exhausted(epoch):
            return pack_window([], count, self.seq_len)
        assert row + count <= self.plan(epoch).num_rows, (row, count)
        return pack_window(self._pieces(epoch, row, count), count, self.seq_len)

    def rows_left(self, epoch: int, row: int) -> int:
        """Rows from (epoch, row) to the end of the epoch (unbounded once exhausted)."""
        return 1 << 62 if self.exhausted(epoch) else self.plan(epoch).num_rows - row

    def _pieces(self, epoch: int, row: int, count: int) -> list[np.ndarray]:
        """The document pieces covering stream tokens [row*L, (row+count)*L + 1) of `epoch`."""
        plan, L = self.plan(epoch), self.seq_len
        start = row * L
        stop = min(start + count * L + 1, int(plan.ends[-1]))
        first = int(np.searchsorted(plan.ends, start, side="right"))
        last = min(int(np.searchsorted(plan.ends, stop, side="left")) + 1, len(plan.docs))
        pieces, cache = [], {}
        for i in range(first, last):
            doc = int(plan.docs[i])
            ids = self._cache.get(doc)
            if ids is None:
                ids = self.source.documents[doc]
            cache[doc] = ids
            doc_start = int(plan.ends[i]) - ids.size
            pieces.append(ids[max(start - doc_start, 0) : stop - doc_start])
        self._cache = cache
        return pieces


class PackedBatchDataset(grain.IterDataset):
    """Packed, mixed batches of one process, forever (or until `num_epochs` of every source are
    done); see the module docstring.

    Elements: dict of int32 [R, L] arrays `tokens`, `labels`, `segment_ids`, `positions`
    (packing.py) and int32 [R] `source_ids` (index into `sources`). `shuffle=False,
    num_epochs=1` gives every document once in corpus order, as validation wants.
    """

    def __init__(
        self,
        sources: Sequence[Source],
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
        for s in sources:
            if len(s.pool) < process_count and (s.weight > 0 or num_epochs is not None):
                raise CorpusError(
                    f"{s.documents.corpus_dir} has {len(s.pool)} documents in this split, fewer "
                    f"than the {process_count} processes that share it; use a larger corpus "
                    "(or a larger data.eval_fraction for the validation split)"
                )
        self.sources = tuple(sources)
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
            f"seq_len={self.seq_len} rows={self.batch_size} seed={self.seed} "
            f"shuffle={self.shuffle} process={self.process_index}/{self.process_count} "
            f"sources=[{', '.join(s.fingerprint() for s in self.sources)}]"
        )

    def __iter__(self) -> PackedBatchIterator:
        return PackedBatchIterator(self)

    def __str__(self) -> str:
        return (
            f"PackedBatchDataset({self.stream_id()} worker={self.worker_index}/{self.worker_count})"
        )


class PackedBatchIterator(grain.DatasetIterator):
    """Iterator of `PackedBatchDataset`; its state is the module docstring's dict."""

    def __init__(self, ds: PackedBatchDataset):
        super().__init__()
        self._ds = ds
        self._schedule = MixtureSchedule([s.weight for s in ds.sources], ds.seed)
        self._streams = [
            RowStream(
                s,
                seq_len=ds.seq_len,
                shuffle=ds.shuffle,
                num_epochs=ds.num_epochs,
                process_index=ds.process_index,
                process_count=ds.process_count,
            )
            for s in ds.sources
        ]
        self._batch = 0
        self._cursors = [(0, 0)] * len(self._streams)
        self._skip(ds.worker_index)

    def _skip(self, batches: int) -> None:
        """Moves every cursor past the rows of the next `batches` batches, without reading."""
        R = self._ds.batch_size
        slots = self._schedule.sources(self._batch * R, batches * R)
        counts = np.bincount(slots, minlength=len(self._streams))
        self._cursors = [
            stream.advance(*cursor, int(n))
            for stream, cursor, n in zip(self._streams, self._cursors, counts, strict=True)
        ]
        self._batch += batches

    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        R, L = self._ds.batch_size, self._ds.seq_len
        source_ids = self._schedule.sources(self._batch * R, R)
        batch = {k: np.empty((R, L), np.int32) for k in MODEL_INPUTS}
        # A source's rows of this batch are consecutive rows of its stream: pack them as one
        # window per epoch they touch (a per-row loop costs ~8x at short rows).
        for c in np.unique(source_ids):
            stream, (epoch, row) = self._streams[c], self._cursors[c]
            slots = np.flatnonzero(source_ids == c)
            done = 0
            while done < len(slots):
                n = min(len(slots) - done, stream.rows_left(epoch, row))
                packed = stream.rows(epoch, row, n)
                for k in MODEL_INPUTS:
                    batch[k][slots[done : done + n]] = packed[k]
                epoch, row = stream.advance(epoch, row, n)
                done += n
        if self._ds.num_epochs is not None and not batch["segment_ids"].any():
            raise StopIteration
        batch["source_ids"] = source_ids
        self._skip(self._ds.worker_count)
        return batch

    def get_state(self) -> dict[str, Any]:
        return {
            "batch": self._batch,
            "cursors": {
                s.name: [int(e), int(k)]
                for s, (e, k) in zip(self._ds.sources, self._cursors, strict=True)
            },
            "stream": self._ds.stream_id(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("stream") != self._ds.stream_id():
            raise ValueError(
                "this data-iterator state belongs to another data stream:\n"
                f"  state:    {state.get('stream')}\n  iterator: {self._ds.stream_id()}\n"
                "resume with the same corpora, mixture, eval_fraction, seed, seq_len, batch size "
                "and process count, or start the data iterator afresh (drop its checkpointed "
                "state)"
            )
        self._batch = int(state["batch"])
        self._cursors = [tuple(map(int, state["cursors"][s.name])) for s in self._ds.sources]
        for stream in self._streams:
            stream.clear_cache()

    def __str__(self) -> str:
        return f"PackedBatchIterator({self._ds})"


def _check_batch_size(batch_size: int, process_count: int) -> int:
    if process_count < 1 or batch_size % process_count:
        raise ValueError(
            f"train.batch_size={batch_size} must be a positive multiple of the number of "
            f"processes ({process_count}); each process loads batch_size // process_count rows"
        )
    return batch_size // process_count


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
      data_cfg: `lingjax.configs.DataConfig`: the corpus or mixture, tokenizer check, held-out
        fraction, seed, num_workers, prefetch.
      seq_len: L, input tokens per row.
      batch_size: global batch, in rows; each process gets batch_size // process_count.
      vocab_size: the model's vocabulary; the corpora's ids must fit in it.
      process_index, process_count: this process among those sharing the data (jax.process_*).

    Returns:
      a checkpointable Grain iterator (`get_state()` / `set_state()`; `close()` it when done)
      of dicts: tokens, labels (-1 = ignore), segment_ids (0 = padding), positions, each int32
      [batch_size // process_count, seq_len] (packing.py), and source_ids int32 [rows] (the
      source of each row, in sorted mixture-name order; 0 for a single corpus). Documents of
      the validation split (data.eval_fraction) never appear.
    """
    rows = _check_batch_size(batch_size, process_count)
    ds: grain.IterDataset = PackedBatchDataset(
        open_sources(data_cfg, vocab_size=vocab_size, split="train"),
        seq_len=seq_len,
        batch_size=rows,
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


def make_eval_datasets(
    data_cfg: DataConfig,
    *,
    seq_len: int,
    batch_size: int,
    vocab_size: int,
    process_index: int = 0,
    process_count: int = 1,
    corpora: Sequence[CorpusSpec] | None = None,
) -> list[tuple[str, float, PackedBatchDataset]]:
    """The validation split: (name, mixture weight, dataset) per corpus, sorted by name.

    Each dataset is that corpus' held-out documents (data.eval_fraction) once, unshuffled, in
    batches shaped like the training ones; iterating it again gives the same batches. The
    caller takes eval.batches batches (padding with `empty_batch` if it ends sooner, so
    every process runs the same number of steps). With `corpora` (validation corpora that are
    not trained on, eval.capability), each of those instead, all its documents."""
    if corpora is None and data_cfg.eval_fraction <= 0:
        raise CorpusError(
            "no validation split: set data.eval_fraction (e.g. 0.01) to hold documents out"
        )
    rows = _check_batch_size(batch_size, process_count)
    split = "eval" if corpora is None else "all"
    return [
        (
            source.name,
            source.weight,
            PackedBatchDataset(
                [source],
                seq_len=seq_len,
                batch_size=rows,
                shuffle=False,
                num_epochs=1,
                process_index=process_index,
                process_count=process_count,
            ),
        )
        for source in open_sources(data_cfg, vocab_size=vocab_size, split=split, corpora=corpora)
    ]


def empty_batch(rows: int, seq_len: int) -> dict[str, np.ndarray]:
    """A batch of padding only (no target tokens): int32 [rows, seq_len] entries as above."""
    batch = pack_window([], rows, seq_len)
    batch["source_ids"] = np.zeros(rows, np.int32)
    return batch


def _mark_absl_flags_parsed() -> None:
    # Grain workers read absl flags; outside absl.app.run (pytest, notebooks) they are unparsed
    # and the workers would fail. Marking them parsed keeps every flag at its default.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
