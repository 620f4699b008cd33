"""The corpus builder: raw text files -> tokenised ArrayRecord corpus (corpus.py layout).

    manifest = build_corpus(find_inputs("web/*.jsonl"), fmt="jsonl",
                            tokenizer=load_tokenizer("tokenizer.json"), domain="web",
                            output="corpora/web")

Reading and JSON parsing run in this thread while the tokenizer encodes the previous batch of
texts in a worker thread (a Hugging Face tokenizer spreads each batch over all cores and
releases the GIL). EOS is appended to every document by `write_corpus`, which also makes the
output atomic: a crash or a bad record leaves no output directory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import os
import time
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from lingjax.data.corpus import Manifest, write_corpus
from lingjax.data.readers import InputError, ReadStats, read_texts
from lingjax.data.tokenizer import ByteTokenizer, HFTokenizer

# Texts per tokenizer call: big enough to keep every core busy, small enough that two batches in
# flight stay far below memory limits (~16 MB of text).
_BATCH_DOCS = 2048
_BATCH_CHARS = 8 << 20
# At most this many input paths are listed in the manifest (a web crawl has 100k files).
_MAX_LISTED_FILES = 1000


def build_corpus(
    files: list[str],
    *,
    fmt: str,
    tokenizer: ByteTokenizer | HFTokenizer,
    domain: str,
    output: str,
    text_field: str = "text",
    txt_unit: str = "file",
    bad_lines: str = "fail",
    docs_per_shard: int = 4096,
    progress: IO[str] | None = None,
    input_spec: str = "",
) -> Manifest:
    """Tokenises `files` into a new corpus directory `output` and returns its manifest.

    Args:
      files: input paths (readers.find_inputs); fmt, text_field, txt_unit, bad_lines: see
        readers.read_texts.
      tokenizer: ByteTokenizer or HFTokenizer; its kind, sha256, vocab_size and eos_id go to the
        manifest, its eos_id after every document.
      domain: the manifest's domain tag (mixtures name corpora by their own keys, not this).
      output: the corpus directory; must not exist.
      docs_per_shard: documents per ArrayRecord shard.
      progress: where the progress line goes (e.g. sys.stderr); None for silence.
      input_spec: how the user named the inputs (the --input glob), for the manifest and errors.

    Raises InputError (bad or empty input), CorpusError (output exists), TokenizerError.
    """
    stats = ReadStats()
    texts = read_texts(
        files, fmt, text_field=text_field, txt_unit=txt_unit, bad_lines=bad_lines, stats=stats
    )
    bar = Progress(progress, stats) if progress is not None else None
    counts = {"tokens": 0}
    t0 = time.perf_counter()
    metadata: dict[str, Any] = {
        "input": input_spec or ",".join(files),
        "format": fmt,
        "text_field": text_field if fmt != "txt" else None,
        "txt_unit": txt_unit if fmt == "txt" else None,
        "input_files": len(files),
        "input_bytes": sum(os.path.getsize(f) for f in files),
        "tokenizer_path": getattr(tokenizer, "path", None),
        "eos_token": getattr(tokenizer, "eos_token", None),
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if len(files) <= _MAX_LISTED_FILES:
        metadata["input_paths"] = files

    def documents() -> Iterator[np.ndarray]:
        for ids in _encoded(texts, tokenizer):
            counts["tokens"] += ids.size + 1  # + the EOS write_corpus appends
            if bar:
                bar.update(counts["tokens"])
            yield ids
        if bar:
            bar.update(counts["tokens"], final=True)
        if stats.documents == 0:
            raise InputError(_nothing_read(metadata["input"], len(files), stats))
        # write_corpus copies the metadata after the last document: these counts are final.
        metadata.update(
            records_skipped=stats.skipped,
            first_skipped=stats.first_skipped or None,
            empty_documents_skipped=stats.empty,
            build_seconds=round(time.perf_counter() - t0, 3),
        )

    return write_corpus(
        documents(),
        output,
        tokenizer=tokenizer.kind,
        tokenizer_hash=tokenizer.sha256,
        vocab_size=tokenizer.vocab_size,
        eos_id=tokenizer.eos_id,
        domain=domain,
        docs_per_shard=docs_per_shard,
        metadata=metadata,
        tokenizer_files=tokenizer,
    )


def _encoded(texts: Iterator[str], tokenizer: ByteTokenizer | HFTokenizer) -> Iterator[np.ndarray]:
    """Token ids of each text, in order: int32 [n_i]."""
    if isinstance(tokenizer, ByteTokenizer):  # a memcpy per text: a thread would only add cost
        for text in texts:
            yield tokenizer.encode(text)
        return
    # One batch encodes in the worker while the next is read here; at most two in flight.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        for batch in _batches(texts):
            pending.append(pool.submit(tokenizer.encode_batch, batch))
            if len(pending) == 2:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) == _BATCH_DOCS or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _nothing_read(input_spec: str, num_files: int, stats: ReadStats) -> str:
    why = [f"{stats.empty} empty documents"] if stats.empty else []
    if stats.skipped:
        why.append(f"{stats.skipped} bad records skipped, the first: {stats.first_skipped}")
    detail = f" ({'; '.join(why)})" if why else " (the files are empty)"
    return (
        f"--input={input_spec} ({num_files} files) holds no non-empty documents{detail}; check "
        "--input, --format and --text_field"
    )


class Progress:
    """One progress line: share of input bytes read, documents and tokens with their rates.

    On a terminal the line is redrawn every 0.2 s; in a log file a line is added every 30 s."""

    def __init__(self, stream: IO[str], stats: ReadStats):
        self.stream, self.stats = stream, stats
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.interval = 0.2 if self.tty else 30.0
        self.t0 = self.last = time.perf_counter()

    def update(self, tokens: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        s, dt = self.stats, max(now - self.t0, 1e-9)
        share = 100.0 * s.bytes_done / s.bytes_total if s.bytes_total else 100.0
        line = (
            f"build_corpus: {share:5.1f}% of {s.bytes_total / 1e6:,.1f} MB | {s.documents:,} docs "
            f"({s.documents / dt:,.0f}/s) | {tokens:,} tokens ({tokens / dt / 1e6:,.2f} M/s) | "
            f"{int(dt) // 60}:{int(dt) % 60:02d}"
        )
        if s.skipped:
            line += f" | {s.skipped:,} skipped"
        if self.tty:
            end = "\n" if final else ""
            self.stream.write(f"\r{line}\x1b[K{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
