"""Raw text inputs of the corpus builder: .txt, .jsonl and .parquet files (.txt/.jsonl may be
gzipped) -> a stream of document texts.

    files = find_inputs("data/web/*.jsonl.gz")
    stats = ReadStats()
    for text in read_texts(files, "jsonl", text_field="text", stats=stats): ...

A bad record (malformed JSON line, a line that is not an object, a missing or non-string text
field, invalid UTF-8, a null parquet value) raises `InputError` naming the file and line (or
row) and the fix; with `bad_lines="skip"` it is skipped and counted in `stats` instead. Problems
of a whole file (unreadable, not parquet, no such column) always raise.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
from collections.abc import Iterator
from typing import Literal

Format = Literal["txt", "jsonl", "parquet"]
FORMATS: tuple[str, ...] = ("txt", "jsonl", "parquet")
TxtUnit = Literal["file", "line"]
BadLines = Literal["fail", "skip"]

_SKIP_HINT = "or pass --bad_lines=skip to skip and count such records"


class InputError(ValueError):
    """A builder input is missing or malformed; the message names the file (and line) and the
    fix."""


@dataclasses.dataclass
class ReadStats:
    """What `read_texts` has read so far (the progress bar and the manifest report it)."""

    files_done: int = 0
    bytes_done: int = 0  # input bytes consumed (compressed bytes for .gz)
    bytes_total: int = 0
    documents: int = 0  # non-empty texts yielded
    empty: int = 0  # empty texts dropped (they carry no tokens)
    skipped: int = 0  # bad records skipped under bad_lines="skip"
    first_skipped: str = ""  # location and reason of the first one


def find_inputs(patterns: str) -> list[str]:
    """Files matched by comma-separated globs (`**` recurses), sorted, without duplicates.

    InputError if a pattern matches nothing or only directories."""
    files: set[str] = set()
    for pattern in (p.strip() for p in patterns.split(",")):
        if not pattern:
            continue
        matched = glob.glob(os.path.expanduser(pattern), recursive=True)
        regular = [p for p in matched if os.path.isfile(p)]
        if not regular:
            what = "only directories" if matched else "no files"
            raise InputError(
                f"--input={pattern} matches {what}; give files or a glob such as "
                "'data/*.jsonl' (quoted, so the shell does not expand it)"
            )
        files.update(os.path.abspath(p) for p in regular)
    if not files:
        raise InputError("--input is empty; pass files or a glob, e.g. --input='data/*.jsonl'")
    return sorted(files)


def infer_format(files: list[str]) -> str:
    """The one format the files' extensions say (.gz ignored); InputError if mixed or unknown."""
    found = set()
    for f in files:
        name = f[:-3] if f.endswith(".gz") else f
        ext = os.path.splitext(name)[1].lstrip(".").lower()
        fmt = {"txt": "txt", "text": "txt", "jsonl": "jsonl", "json": "jsonl"}.get(ext, ext)
        if fmt not in FORMATS:
            raise InputError(
                f"cannot tell the format of {f} from its extension; pass --format="
                f"{'|'.join(FORMATS)}"
            )
        found.add(fmt)
    if len(found) > 1:
        raise InputError(
            f"the inputs mix formats ({', '.join(sorted(found))}); build one corpus per format, "
            "or pass --format to read them all as one"
        )
    return found.pop()


def read_texts(
    files: list[str],
    fmt: str,
    *,
    text_field: str = "text",
    txt_unit: str = "file",
    bad_lines: str = "fail",
    stats: ReadStats | None = None,
) -> Iterator[str]:
    """The non-empty document texts of `files`, in order.

    Args:
      files: input paths (see `find_inputs`).
      fmt: "txt" (a document per file, or per line with txt_unit="line"), "jsonl" (one JSON
        object per line, the text in `text_field`; blank lines are ignored) or "parquet" (the
        string column `text_field`).
      bad_lines: "fail" raises InputError at the first bad record; "skip" counts it in `stats`.
      stats: filled in as the files are read.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format={fmt} is not one of {', '.join(FORMATS)}")
    if bad_lines not in ("fail", "skip"):
        raise InputError(f"--bad_lines={bad_lines} is not one of fail, skip")
    if txt_unit not in ("file", "line"):
        raise InputError(f"--txt_unit={txt_unit} is not one of file, line")
    stats = stats if stats is not None else ReadStats()
    stats.bytes_total = sum(os.path.getsize(f) for f in files)

    def bad(location: str, reason: str, fix: str) -> None:
        if bad_lines == "fail":
            raise InputError(f"{location}: {reason}; {fix}, {_SKIP_HINT}")
        stats.skipped += 1
        if not stats.first_skipped:
            stats.first_skipped = f"{location}: {reason}"

    read = {"txt": _read_txt, "jsonl": _read_jsonl, "parquet": _read_parquet}[fmt]
    for path in files:
        base = stats.bytes_done
        for text in read(path, text_field=text_field, txt_unit=txt_unit, bad=bad, stats=stats):
            if text:
                stats.documents += 1
                yield text
            else:
                stats.empty += 1
        stats.bytes_done = base + os.path.getsize(path)
        stats.files_done += 1


class _Lines:
    """Binary lines of a plain or gzipped file, tracking the (compressed) bytes consumed."""

    def __init__(self, path: str, stats: ReadStats):
        self.path, self.stats = path, stats

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        base = self.stats.bytes_done
        try:
            with open(self.path, "rb") as raw:
                f = gzip.GzipFile(fileobj=raw) if self.path.endswith(".gz") else raw
                for lineno, line in enumerate(f, 1):
                    if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM
                        line = line[3:]
                    yield lineno, line
                    self.stats.bytes_done = base + raw.tell()
        except (OSError, EOFError) as e:  # unreadable, or a truncated/corrupt .gz
            raise InputError(f"cannot read {self.path} ({e}); check the file") from e


def _utf8(data: bytes, path: str, first_line: int, bad) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        bad(f"{path}:{line}", f"invalid UTF-8 ({e.reason})", "convert the file to UTF-8")
        return None


def _read_txt(path: str, *, txt_unit: str, bad, stats: ReadStats, **_) -> Iterator[str]:
    if txt_unit == "line":
        for lineno, line in _Lines(path, stats):
            text = _utf8(line.rstrip(b"\r\n"), path, lineno, bad)
            if text is not None:
                yield text
        return
    data = b"".join(line for _, line in _Lines(path, stats))
    text = _utf8(data, path, 1, bad)
    if text is not None:
        yield text


def _read_jsonl(path: str, *, text_field: str, bad, stats: ReadStats, **_) -> Iterator[str]:
    for lineno, line in _Lines(path, stats):
        if not line.strip():
            continue
        location = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            bad(location, f"not valid JSON ({e})", "fix or remove the line")
            continue
        if not isinstance(obj, dict):
            bad(location, f"a JSON {type(obj).__name__}, not an object", "fix or remove the line")
            continue
        text = obj.get(text_field)
        if isinstance(text, str):
            yield text
        elif text_field not in obj:
            strings = [k for k, v in obj.items() if isinstance(v, str)]
            fix = (
                f"pass --text_field with one of its string fields: {', '.join(strings)}"
                if strings
                else "pass --text_field naming the field that holds the text"
            )
            bad(location, f'no "{text_field}" field', fix)
        else:
            kind = "null" if text is None else f"a {type(text).__name__}"
            bad(location, f'"{text_field}" is {kind}, not a string', "fix the record")


def _read_parquet(path: str, *, text_field: str, bad, stats: ReadStats, **_) -> Iterator[str]:
    import pyarrow as pa  # only needed for parquet inputs
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path} is not a readable parquet file ({e}); check the file") from e
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise InputError(
            f"{path} has no column {text_field!r} (columns: {', '.join(schema.names)}); pass "
            "--text_field=NAME"
        )
    tp = schema.field(text_field).type
    if not (pa.types.is_string(tp) or pa.types.is_large_string(tp)):
        raise InputError(
            f"{path}: column {text_field!r} has type {tp}, not string; pass --text_field naming "
            "a string column"
        )
    total_rows = max(pf.metadata.num_rows, 1)
    size, base, row = os.path.getsize(path), stats.bytes_done, 0
    try:
        for batch in pf.iter_batches(batch_size=4096, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                row += 1
                if text is None:
                    bad(f"{path}: row {row}", f"{text_field!r} is null", "fix the record")
                else:
                    yield text
            stats.bytes_done = base + size * row // total_rows
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read {path} after row {row} ({e}); check the file") from e
