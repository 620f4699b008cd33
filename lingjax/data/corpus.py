"""Tokenised corpora on disk: ArrayRecord shards of documents plus a JSON manifest.

Layout of a corpus directory (format version 2):

    manifest.json                 what `Manifest` holds (tokenizer kind and sha256, vocab_size,
                                  dtype, eos_id, domain, per-shard document and token counts)
    shard-00000.array_record      one record per document: its token ids, EOS appended, as
                                  little-endian uint16 (vocab_size <= 65536) or uint32 bytes
    shard-00000.lengths.npy       uint32 [documents]: tokens per record (EOS included), so the
                                  pipeline can plan packing without reading the records
    ...

Records are written with `group_size:1` (each document its own zstd chunk) because the
pipeline reads documents in a shuffled order; a larger group would decompress a whole group per
document read.

A corpus is written into a hidden temporary sibling directory and renamed into place only when
complete, so a directory with a manifest is always a finished corpus.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np

from lingjax.data.tokenizer import ByteTokenizer, HFTokenizer, save_tokenizer

FORMAT = "lingjax-corpus"
FORMAT_VERSION = 2  # 2: tokenizer_hash
MANIFEST = "manifest.json"
# Records are small and read in random order: one document per chunk, zstd (the default codec;
# the stdlib corpus shrinks 6x and decompresses at several hundred MB/s).
_WRITER_OPTIONS = "group_size:1"


class CorpusError(ValueError):
    """A corpus is missing, incomplete, foreign or does not fit the run; the message says how to
    fix it."""


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    file: str  # ArrayRecord file name, relative to the corpus directory
    lengths_file: str  # .npy of uint32 document lengths, relative to the corpus directory
    documents: int
    tokens: int  # EOS included


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a corpus directory holds; `manifest.json` is this, as JSON."""

    tokenizer: str  # tokenizer kind: "byte" or "hf" (a tokenizer.json)
    tokenizer_hash: str  # sha256 of the tokenizer (tokenizer.py); "" if unknown
    vocab_size: int  # every id is < vocab_size
    dtype: str  # numpy dtype of the record bytes, little-endian: "uint16" or "uint32"
    eos_id: int  # appended to every document
    domain: str  # free-form tag for domain studies ("code", "web", ...)
    shards: tuple[ShardInfo, ...]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)  # provenance

    @property
    def num_documents(self) -> int:
        return sum(s.documents for s in self.shards)

    @property
    def num_tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "tokenizer": self.tokenizer,
                "tokenizer_hash": self.tokenizer_hash,
                "vocab_size": self.vocab_size,
                "dtype": self.dtype,
                "byte_order": "little",
                "eos_id": self.eos_id,
                "eos_appended": True,
                "domain": self.domain,
                "num_documents": self.num_documents,
                "num_tokens": self.num_tokens,
                "shards": [dataclasses.asdict(s) for s in self.shards],
                "metadata": self.metadata,
            },
            indent=1,
        )


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest little-endian unsigned dtype holding ids < vocab_size."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


# ---------------------------------------------------------------------------------------------
# Writing


def write_corpus(
    docs: Iterable[np.ndarray],
    out_dir: str | os.PathLike,
    *,
    tokenizer: str,
    vocab_size: int,
    domain: str,
    tokenizer_hash: str = "",
    docs_per_shard: int = 4096,
    eos_id: int = ByteTokenizer.EOS,
    metadata: dict[str, Any] | None = None,
    exist_ok: bool = False,
    tokenizer_files: ByteTokenizer | HFTokenizer | None = None,
) -> Manifest:
    """Writes tokenised documents as a corpus directory and returns its manifest.

    Args:
      docs: token ids of each document, int arrays [n] with ids in [0, vocab_size), WITHOUT an
        end-of-document id: EOS is appended here so every stored document ends with it. Empty
        documents are skipped (they carry no text).
      out_dir: the corpus directory to create; must not exist yet.
      tokenizer: tokenizer kind recorded in the manifest ("byte", "hf").
      vocab_size: the tokenizer's vocabulary size; sets the stored dtype (uint16 up to 65536).
      domain: tag recorded in the manifest (domain studies mix corpora by it).
      tokenizer_hash: the tokenizer's `sha256`; runs compare it with their tokenizer's.
      docs_per_shard: documents per ArrayRecord shard.
      eos_id: end-of-document id appended to each document (the byte tokenizer's EOS = 1).
      metadata: JSON-serialisable provenance stored in the manifest. It is copied after the
        last document is consumed, so a generator of `docs` may still add counts to it.
      exist_ok: if a finished corpus is already at out_dir (or another process finishes one
        there while this one builds), keep it, discard this build and return its manifest.
      tokenizer_files: the tokenizer itself, recorded in the corpus (its tokenizer.json copied)
        so a run trained on the corpus can decode text later (`save_tokenizer`).

    The build goes into a temporary sibling directory renamed to out_dir at the end: a crash or
    an exception leaves no out_dir, and a concurrent builder's finished corpus is never
    overwritten.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    if is_finished(out_dir) and exist_ok:
        return read_manifest(out_dir)
    if os.path.exists(out_dir):
        raise CorpusError(
            f"{out_dir} already exists; write the corpus to a new directory or delete it first"
        )
    if docs_per_shard <= 0 or vocab_size <= 0:
        raise ValueError(f"docs_per_shard={docs_per_shard} and vocab_size={vocab_size} must be > 0")
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id={eos_id} must be in [0, vocab_size={vocab_size})")
    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must be readable
        shards = _write_shards(docs, tmp, vocab_size, eos_id, docs_per_shard)
        if not shards:
            raise CorpusError(f"no non-empty documents to write to {out_dir}; check the inputs")
        manifest = Manifest(
            tokenizer=tokenizer,
            tokenizer_hash=tokenizer_hash,
            vocab_size=vocab_size,
            dtype=token_dtype(vocab_size).name,
            eos_id=eos_id,
            domain=domain,
            shards=tuple(shards),
            metadata=dict(metadata or {}),
        )
        if tokenizer_files is not None:
            save_tokenizer(tokenizer_files, tmp)
        _write_synced(os.path.join(tmp, MANIFEST), manifest.to_json().encode())
        if _publish(tmp, out_dir):
            return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Another builder finished out_dir first; its corpus stands (ours was discarded).
    if exist_ok:
        return read_manifest(out_dir)
    raise CorpusError(
        f"{out_dir} appeared while this corpus was being built (another process wrote it); "
        "kept that one and discarded this build. Write to a new directory, or pass exist_ok=True"
    )


def _write_shards(
    docs: Iterable[np.ndarray], tmp: str, vocab_size: int, eos_id: int, docs_per_shard: int
) -> list[ShardInfo]:
    # Imported here: array_record pulls in absl flags and a C++ module, not needed to read a
    # manifest.
    from array_record.python.array_record_module import ArrayRecordWriter

    dtype = token_dtype(vocab_size)
    shards: list[ShardInfo] = []
    writer, lengths = None, []

    def finish_shard() -> None:
        writer.close()
        index = len(shards)
        lengths_file = f"shard-{index:05d}.lengths.npy"
        np.save(os.path.join(tmp, lengths_file), np.asarray(lengths, dtype=np.uint32))
        _fsync(os.path.join(tmp, lengths_file))
        _fsync(os.path.join(tmp, _shard_name(index)))
        shards.append(ShardInfo(_shard_name(index), lengths_file, len(lengths), int(sum(lengths))))

    for i, doc in enumerate(docs):
        ids = np.asarray(doc)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(
                f"document {i}: expected a 1-D integer array, got {ids.dtype}{ids.shape}"
            )
        if ids.size == 0:
            continue
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"document {i} has token id {lo if lo < 0 else hi} outside [0, vocab_size="
                f"{vocab_size}); pass the tokenizer's vocab_size"
            )
        if writer is None:
            writer = ArrayRecordWriter(os.path.join(tmp, _shard_name(len(shards))), _WRITER_OPTIONS)
            lengths = []
        record = np.empty(ids.size + 1, dtype)
        record[:-1] = ids
        record[-1] = eos_id
        writer.write(record.tobytes())
        lengths.append(record.size)
        if len(lengths) == docs_per_shard:
            finish_shard()
            writer = None
    if writer is not None:
        finish_shard()
    return shards


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.array_record"


def _fsync(path: str) -> None:
    # A rename can reach the disk before the file data does; sync first so a power loss cannot
    # leave a renamed corpus with truncated shards.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _publish(tmp: str, out_dir: str) -> bool:
    """Renames tmp to out_dir; False (tmp deleted) if a finished corpus got there first."""
    try:
        # rename(2) of a directory fails on a non-empty destination, so it never clobbers a
        # corpus another process published meanwhile.
        os.rename(tmp, out_dir)
    except OSError:
        if not is_finished(out_dir):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    try:  # make the rename itself durable
        fd = os.open(os.path.dirname(out_dir), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the data files are synced already
    return True


def is_finished(corpus_dir: str) -> bool:
    return os.path.isfile(os.path.join(corpus_dir, MANIFEST))


# ---------------------------------------------------------------------------------------------
# Reading


def read_manifest(corpus_dir: str | os.PathLike) -> Manifest:
    """The manifest of a finished corpus; CorpusError (naming the file and the fix) if the
    directory or manifest is missing, unreadable, foreign, or a shard file is missing."""
    corpus_dir = os.fspath(corpus_dir)
    path = os.path.join(corpus_dir, MANIFEST)
    build_hint = (
        "build one with `python -m lingjax.cli.build_corpus --input=... --output=DIR`, or leave "
        "data.corpus empty to use the default corpus"
    )
    if not os.path.isdir(corpus_dir):
        raise CorpusError(f"corpus directory {corpus_dir} does not exist; {build_hint}")
    if not os.path.isfile(path):
        raise CorpusError(
            f"{path} is missing: {corpus_dir} is not a finished corpus (a finished build always "
            f"has one; an interrupted build leaves nothing). Point data.corpus at a corpus "
            f"directory, or {build_hint}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise CorpusError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); rebuild the "
            "corpus"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"cannot read {path} ({e}); rebuild the corpus") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CorpusError(
            f'{path} is not a lingjax corpus manifest (no "format": "{FORMAT}"); point '
            f"data.corpus at a directory written by lingjax.cli.build_corpus"
        )
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CorpusError(
            f"{path} has format_version={version!r}; this lingjax reads version "
            f"{FORMAT_VERSION}. Rebuild the corpus with this lingjax (or upgrade lingjax)"
        )
    try:
        manifest = Manifest(
            tokenizer=str(raw["tokenizer"]),
            tokenizer_hash=str(raw["tokenizer_hash"]),
            vocab_size=int(raw["vocab_size"]),
            dtype=str(raw["dtype"]),
            eos_id=int(raw["eos_id"]),
            domain=str(raw["domain"]),
            shards=tuple(
                ShardInfo(
                    str(s["file"]), str(s["lengths_file"]), int(s["documents"]), int(s["tokens"])
                )
                for s in raw["shards"]
            ),
            metadata=dict(raw.get("metadata") or {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CorpusError(
            f"{path} is malformed ({type(e).__name__}: {e}); rebuild the corpus"
        ) from e
    if manifest.dtype not in ("uint16", "uint32") or not manifest.shards:
        raise CorpusError(f"{path}: dtype {manifest.dtype!r} / shards unsupported; rebuild it")
    if (raw.get("num_documents"), raw.get("num_tokens")) != (
        manifest.num_documents,
        manifest.num_tokens,
    ):
        raise CorpusError(f"{path}: totals disagree with the per-shard counts; rebuild the corpus")
    for shard in manifest.shards:
        for name in (shard.file, shard.lengths_file):
            if not os.path.isfile(os.path.join(corpus_dir, name)):
                raise CorpusError(
                    f"{os.path.join(corpus_dir, name)} is missing: the corpus {corpus_dir} is "
                    f"incomplete; restore the file or rebuild the corpus"
                )
    return manifest


def read_document_lengths(corpus_dir: str | os.PathLike, manifest: Manifest) -> np.ndarray:
    """Tokens of every document (EOS included), in record order over all shards: int64 [N]."""
    corpus_dir = os.fspath(corpus_dir)
    parts = []
    for shard in manifest.shards:
        path = os.path.join(corpus_dir, shard.lengths_file)
        try:
            lengths = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CorpusError(f"cannot read {path} ({e}); rebuild the corpus") from e
        if lengths.shape != (shard.documents,) or int(lengths.sum(dtype=np.int64)) != shard.tokens:
            raise CorpusError(
                f"{path} disagrees with {MANIFEST} ({lengths.shape[0]} lengths summing to "
                f"{int(lengths.sum(dtype=np.int64))}, manifest says {shard.documents} documents "
                f"and {shard.tokens} tokens); rebuild the corpus"
            )
        parts.append(lengths.astype(np.int64))
    return np.concatenate(parts)
