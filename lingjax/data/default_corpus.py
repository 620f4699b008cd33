"""The default corpus: this Python's standard-library source, byte-tokenised into a cache
directory on first use (what `lingjax.cli.train` trains on with no data flags).

    corpus_dir = default_corpus()      # <cache>/default-corpus-py312-byte-v2/, built once

It is real code with docstrings, PSF-licensed and present on every machine, so the README's
first command needs no download.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import time

from lingjax.data.corpus import MANIFEST, CorpusError, is_finished, read_manifest, write_corpus
from lingjax.data.tokenizer import ByteTokenizer

DEFAULT_CORPUS_VERSION = 2  # bumped with the corpus FORMAT_VERSION: old caches are left alone


def cache_root(cache_dir: str = "") -> str:
    """`cache_dir`, else $LINGJAX_CACHE, else ~/.cache/lingjax."""
    return os.path.abspath(
        os.path.expanduser(
            cache_dir or os.environ.get("LINGJAX_CACHE") or os.path.join("~", ".cache", "lingjax")
        )
    )


def stdlib_source_files(stdlib_dir: str | None = None) -> list[str]:
    """Every `*.py` under the standard library (this Python's unless given), sorted by relative
    path, skipping installed packages (site-packages/dist-packages). The `test/` tree is kept:
    it is real Python (about 60% of the bytes) and nearly triples the corpus, so small-model
    scaling runs repeat epochs less; its few deliberately odd files (other encodings) do not
    trouble a byte tokenizer."""
    root = stdlib_dir or sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")
        ]
        files.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
    # Sort on the relative path with "/" so the order is the same on every machine.
    return sorted(files, key=lambda p: os.path.relpath(p, root).replace(os.sep, "/"))


def default_corpus(cache_dir: str = "") -> str:
    """Directory of the default corpus, built on first use: this Python's standard-library source
    (`stdlib_source_files`), one document per file, byte tokenizer, domain "code".

    Cached in `<cache>/default-corpus-py<major><minor>-byte-v1/` (see `cache_root`); later calls
    (and other processes) reuse it. Building takes about a second for ~32 M tokens.
    """
    major, minor = sys.version_info[:2]
    path = os.path.join(
        cache_root(cache_dir), f"default-corpus-py{major}{minor}-byte-v{DEFAULT_CORPUS_VERSION}"
    )
    if is_finished(path):
        read_manifest(path)  # fail early, with the fix, if a shard was deleted
        return path
    if os.path.exists(path):
        raise CorpusError(
            f"{path} exists but holds no {MANIFEST}; it is not a corpus lingjax wrote. Delete it "
            "and the default corpus will be rebuilt there"
        )
    tok = ByteTokenizer()
    stdlib = sysconfig.get_paths()["stdlib"]
    print(
        f"lingjax: building the default corpus (Python {major}.{minor} stdlib source) in "
        f"{path} ...",
        end="",
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        # ~32 MB: read everything first so the manifest can say which files were unreadable.
        texts, skipped = [], []
        for file in stdlib_source_files(stdlib):
            try:
                with open(file, "rb") as f:
                    texts.append(f.read())
            except OSError:
                skipped.append(os.path.relpath(file, stdlib))
        manifest = write_corpus(
            (tok.encode_bytes(t) for t in texts),
            path,
            tokenizer=tok.kind,
            tokenizer_hash=tok.sha256,
            vocab_size=tok.vocab_size,
            domain="code",
            eos_id=tok.EOS,
            metadata={
                "source": "python-stdlib",
                "python": sys.version.split()[0],
                "stdlib_dir": stdlib,
                "test_tree_included": True,
                "unreadable_files_skipped": skipped,
            },
            docs_per_shard=512,  # a few shards, as real corpora have
            exist_ok=True,  # another process may build it at the same time; keep the winner
            tokenizer_files=tok,
        )
    except BaseException:
        print(" failed", flush=True)
        raise
    seconds = time.perf_counter() - t0
    print(
        f" {manifest.num_documents} documents, {manifest.num_tokens:,} tokens in {seconds:.1f} s",
        flush=True,
    )
    return path
