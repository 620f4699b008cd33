"""The corpora of a run: opening and checking them, the validation split, the mixture schedule
and the realised-mixture meter.

    sources = open_sources(cfg.data, vocab_size=512, split="train")   # one per corpus
    schedule = MixtureSchedule([s.weight for s in sources], seed=cfg.data.seed)
    schedule.sources(start=0, count=8)        # int32 [8]: which source each row slot reads

Validation split: corpus document i is held out iff it is among the first
round(eval_fraction * N) entries of a fixed permutation (`HOLDOUT_SEED`, not data.seed), so the
split depends only on the corpus and the fraction, and a larger fraction holds out a superset.

Mixture schedule: row slot s (batch j, row r -> s = j*R + r) reads source c when
u_s = (offset + s * 2^64/phi) mod 2^64 falls in c's share of [0, 2^64) (shares proportional to
the weights, in name order). The golden-ratio (Weyl) sequence is equidistributed with the lowest
discrepancy of its kind: after n slots every source has had n * weight rows to within a few
rows, the order still looks random, and any slot's source is computed directly (resume and
Grain workers need no history).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lingjax.data.corpus import CorpusError, Manifest, read_manifest
from lingjax.data.default_corpus import default_corpus
from lingjax.data.documents import CorpusDocuments, permutation
from lingjax.data.tokenizer import (
    ByteTokenizer,
    TokenizerError,
    copy_tokenizer_files,
    load_tokenizer,
    read_tokenizer_record,
    recorded_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
    write_tokenizer_record,
)

if TYPE_CHECKING:
    from lingjax.configs import CorpusSpec, DataConfig

HOLDOUT_SEED = 0x5EED_0E7A1  # fixed: changing data.seed must not move documents across the split
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd


@dataclass(frozen=True)
class Source:
    """One corpus as a run reads it."""

    name: str  # the mixture key (a single corpus: its manifest's domain)
    documents: CorpusDocuments
    pool: np.ndarray  # int64 [n], sorted: the documents of this split (train or eval)
    weight: float  # share of training rows, normalised over the run's sources
    seed: int  # this source's shuffle seed (data.seed mixed with the name)

    def fingerprint(self) -> str:
        return f"{self.name}:{self.weight:.6g}:{len(self.pool)}@{self.documents.fingerprint()}"


def split_documents(num_docs: int, eval_fraction: float, where: str) -> tuple[np.ndarray, ...]:
    """(train, eval) document indices, each int64 sorted; eval is empty for eval_fraction 0."""
    if eval_fraction <= 0:
        return np.arange(num_docs, dtype=np.int64), np.zeros(0, np.int64)
    n_eval = max(1, round(eval_fraction * num_docs))
    if n_eval >= num_docs:
        raise CorpusError(
            f"data.eval_fraction={eval_fraction} holds out all {num_docs} documents of {where}; "
            "lower data.eval_fraction or use a larger corpus"
        )
    held = np.zeros(num_docs, bool)
    held[permutation(num_docs, HOLDOUT_SEED, 0)[:n_eval]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _name_seed(seed: int, name: str) -> int:
    # Per-source shuffle seeds: adding a corpus to a mixture must not reorder the others.
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little")


def open_sources(
    data_cfg: DataConfig,
    *,
    vocab_size: int,
    split: str,
    corpora: Sequence[CorpusSpec] | None = None,
) -> list[Source]:
    """The run's corpora (sorted by name), checked against the model and the run's tokenizer,
    each restricted to its `split` documents: "train", "eval" (the held-out split) or "all".

    `corpora` opens these instead of the run's (validation corpora, eval.capability; weights
    unused), checked against the run's tokenizer: data.tokenizer, else the training corpora's.

    CorpusError, naming the corpus and the fix, if a corpus is missing or foreign, needs a larger
    vocab than the model's, or was built with another tokenizer than the run's (or than the
    mixture's other corpora)."""
    assert split in ("train", "eval", "all"), split
    data_cfg.validate()
    expected = tokenizer_fingerprint(data_cfg.tokenizer) if data_cfg.tokenizer else None
    first = None
    if corpora is not None:
        entries = [
            (c.name, c.path, 1.0, f"eval.capability corpus {c.name}={c.path}")
            for c in sorted(corpora, key=lambda c: c.name)
        ]
        if expected is None:  # the training corpora's tokenizer is the run's
            train = open_sources(data_cfg, vocab_size=vocab_size, split="train")[0]
            where = f"the training corpus {train.documents.corpus_dir}"
            m = train.documents.manifest
            first = (where, (m.tokenizer, m.tokenizer_hash))
    elif weights := data_cfg.mixture_weights():
        dirs = data_cfg.corpus_dirs()
        entries = [
            (name, dirs[name], w, f"data.mixture corpus {name}={dirs[name]}")
            for name, w in weights.items()
        ]
    else:
        corpus_dir = data_cfg.corpus or default_corpus(data_cfg.cache_dir)
        entries = [("", corpus_dir, 1.0, f"data.corpus={corpus_dir}")]
    sources = []
    for name, corpus_dir, weight, where in entries:
        manifest = read_manifest(corpus_dir)
        _check_vocab(manifest, corpus_dir, vocab_size)
        built_with = (manifest.tokenizer, manifest.tokenizer_hash)
        if expected and not _same_tokenizer(built_with, expected):
            raise CorpusError(
                f"{where} was built with tokenizer {_describe(*built_with)}, but data.tokenizer="
                f"{data_cfg.tokenizer} is {_describe(*expected)}; rebuild the corpus with "
                f"--tokenizer={data_cfg.tokenizer}, or set data.tokenizer to the one it was "
                "built with"
            )
        if first and not _same_tokenizer(built_with, first[1]):
            raise CorpusError(
                f"{where} was built with tokenizer {_describe(*built_with)}, but {first[0]} with "
                f"{_describe(*first[1])}; a run reads one tokenizer: rebuild one of them"
            )
        first = first or (where, built_with)
        documents = CorpusDocuments(corpus_dir, manifest)
        if split == "all":
            pool = np.arange(len(documents), dtype=np.int64)
        else:
            train_ids, eval_ids = split_documents(len(documents), data_cfg.eval_fraction, where)
            pool = train_ids if split == "train" else eval_ids
        sources.append(
            Source(
                name=name or manifest.domain,
                documents=documents,
                pool=pool,
                weight=weight,
                seed=_name_seed(data_cfg.seed, name),
            )
        )
    return sources


def run_tokenizer(data_cfg: DataConfig, sources: Sequence[Source]) -> Any:
    """The run's tokenizer as an object (to write task text in the run's ids): data.tokenizer if
    set, else the one the corpora were built with. TokenizerError, with the fix, if the corpus
    does not hold it (a tokenizer.json corpus from before corpora recorded theirs)."""
    if data_cfg.tokenizer:
        return load_tokenizer(data_cfg.tokenizer)
    corpus_dir = sources[0].documents.corpus_dir
    if read_tokenizer_record(corpus_dir) is None:
        if sources[0].documents.manifest.tokenizer == "byte":
            return ByteTokenizer()
        raise TokenizerError(
            f"{corpus_dir} records no tokenizer file, and reading text needs one: set "
            "data.tokenizer to the tokenizer.json the corpus was built with"
        )
    return recorded_tokenizer(corpus_dir)


def save_run_tokenizer(data_cfg: DataConfig, sources: Sequence[Source], directory: str) -> None:
    """Records the run's tokenizer in `directory` (a training workdir): data.tokenizer if set,
    else the one the corpora were built with (their record and tokenizer.json when the corpus
    has them, else the kind and hash of its manifest)."""
    if data_cfg.tokenizer:
        save_tokenizer(load_tokenizer(data_cfg.tokenizer), directory)
        return
    corpus_dir = sources[0].documents.corpus_dir
    record = read_tokenizer_record(corpus_dir)
    if record is not None:
        copy_tokenizer_files(corpus_dir, directory)
    else:  # a corpus from before corpora recorded their tokenizer
        m = sources[0].documents.manifest
        record = {
            "kind": m.tokenizer,
            "sha256": m.tokenizer_hash,
            "vocab_size": m.vocab_size,
            "eos_id": m.eos_id,
            "eos_token": m.metadata.get("eos_token"),
        }
    write_tokenizer_record(directory, record)


def _same_tokenizer(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Whether two (kind, sha256) records name one tokenizer: the same kind, and the same hash
    unless the kind is byte (no file) or a hash is unknown ("": written without one)."""
    return a[0] == b[0] and (a[0] == "byte" or not a[1] or not b[1] or a[1] == b[1])


def _describe(kind: str, sha256: str) -> str:
    return f"{kind} (sha256 {sha256[:12] or 'unrecorded'})"


def _check_vocab(manifest: Manifest, corpus_dir: str, vocab_size: int) -> None:
    if manifest.vocab_size > vocab_size:
        raise CorpusError(
            f"corpus {corpus_dir} uses token ids up to {manifest.vocab_size - 1} "
            f"(tokenizer {manifest.tokenizer!r}, vocab_size {manifest.vocab_size}) but the model "
            f"has vocab_size {vocab_size}; set model.vocab_size >= {manifest.vocab_size} or use a "
            f"corpus built with the model's tokenizer"
        )


class MixtureSchedule:
    """Which source each row slot reads (module docstring); the same on every process."""

    def __init__(self, weights: Sequence[float], seed: int):
        w = np.asarray(weights, np.float64)
        assert w.ndim == 1 and len(w) and (w >= 0).all(), weights
        # One source takes every slot, whatever its weight (a validation stream may have 0).
        cum = np.cumsum(w / w.sum())[:-1] if len(w) > 1 else np.zeros(0)
        # Share boundaries in [0, 2^64) as exact integers (Python ints avoid float overflow).
        self._bounds = np.array([min(int(c * 2.0**64), 2**64 - 1) for c in cum], np.uint64)
        self._offset = np.uint64(_name_seed(seed, "mixture-schedule"))

    def sources(self, start: int, count: int) -> np.ndarray:
        """Source index of row slots [start, start + count): int32 [count]."""
        if not len(self._bounds):
            return np.zeros(count, np.int32)
        slots = np.arange(start, start + count, dtype=np.uint64)
        u = self._offset + slots * _GOLDEN  # wraps mod 2^64, as intended
        return np.searchsorted(self._bounds, u, side="right").astype(np.int32)


class MixtureMeter:
    """Realised mixture: each source's share of the input tokens (padding excluded) in the
    batches seen since the last `metrics()`; empty for a single corpus.

        meter = MixtureMeter(cfg.data); meter.update(batch); meter.metrics()
        # {"mixture/code": 0.301, "mixture/web": 0.699}
    """

    def __init__(self, data_cfg: DataConfig):
        self.names = list(data_cfg.mixture_weights())  # sorted: the sources' order
        self._tokens = np.zeros(len(self.names), np.int64)

    def update(self, batch: dict[str, np.ndarray]) -> None:
        """batch: a pipeline batch with `source_ids` int32 [R] and `segment_ids` int32 [R, L]."""
        if len(self.names) > 1:
            per_row = (np.asarray(batch["segment_ids"]) > 0).sum(axis=1)
            self._tokens += np.bincount(
                np.asarray(batch["source_ids"]), weights=per_row, minlength=len(self.names)
            ).astype(np.int64)

    def metrics(self) -> dict[str, Any]:
        total = int(self._tokens.sum())
        if not total:
            return {}
        out = {
            f"mixture/{n}": int(t) / total for n, t in zip(self.names, self._tokens, strict=True)
        }
        self._tokens[:] = 0
        return out
