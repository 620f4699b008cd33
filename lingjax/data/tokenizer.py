"""Tokenizers: the built-in byte tokenizer and Hugging Face `tokenizer.json` files.

    tok = load_tokenizer("byte")                         # no files needed
    tok = load_tokenizer("path/to/tokenizer.json")       # EOS found in the file (or eos_token=)
    ids = tok.encode_batch(["def f(): ...", "x = 1"])    # list of int32 [n_i], no specials added

Every tokenizer has the same surface: `kind` ("byte" | "hf") and `sha256` (what a corpus manifest
records, so a run can refuse a corpus built with another tokenizer), `vocab_size` (every id is
below it), `eos_id` (appended after each document by the corpus builder), `encode`,
`encode_batch` and `decode`.

Byte tokenizer ids: PAD = 0, EOS = 1, BOS = 2, byte b -> b + 3; vocab_size = 259.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np


class TokenizerError(ValueError):
    """A tokenizer cannot be loaded or used as asked; the message says how to fix it."""


class Tokenizer(Protocol):
    kind: str
    sha256: str
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> np.ndarray: ...

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Iterable[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids (`PAD`, `EOS`, `BOS`)."""

    kind = "byte"
    name = "byte"  # the manifest's tokenizer kind
    PAD = 0
    EOS = 1
    BOS = 2
    OFFSET = 3  # id of byte 0
    vocab_size = 256 + OFFSET
    # The hash of a description of the id scheme: changes only if the scheme does.
    sha256 = hashlib.sha256(b"lingjax byte tokenizer: PAD=0 EOS=1 BOS=2 byte b -> b+3").hexdigest()

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

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`encode` of each text (a memcpy per text: no threads needed)."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Ids back to text. Specials and ids outside the byte range (a model whose vocab is
        larger than 259 can sample those) are skipped; invalid UTF-8 becomes U+FFFD."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        arr = arr[(arr >= self.OFFSET) & (arr < self.vocab_size)]
        return (arr - self.OFFSET).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


# Special tokens that end a document in common tokenizers (GPT-2/Qwen/Ling "<|endoftext|>",
# Llama-3 "<|end_of_text|>", SentencePiece "</s>", Gemma "<eos>"). Chat-turn ends such as
# "<|im_end|>" or "<|eot_id|>" are deliberately not here: they end a turn, not a document.
_EOS_NAMES = ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "<|end▁of▁sentence|>")


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer.json. Batch encoding runs on all cores (Rust threads;
    the GIL is released, so Python work overlaps it)."""

    kind = "hf"

    def __init__(self, path: str | os.PathLike, eos_token: str = ""):
        from tokenizers import Tokenizer as _HFTokenizer  # only needed for tokenizer.json files

        self.path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(self.path):
            raise TokenizerError(
                f"tokenizer file {self.path} does not exist; pass the path of a Hugging Face "
                "tokenizer.json, or 'byte' for the built-in byte tokenizer"
            )
        with open(self.path, "rb") as f:
            raw = f.read()
        self.sha256 = hashlib.sha256(raw).hexdigest()
        try:
            self._tok = _HFTokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # the Rust side raises a bare Exception
            raise TokenizerError(
                f"{self.path} is not a Hugging Face tokenizer.json ({e}); pass a tokenizer.json "
                "(saved with tokenizer.save(...)), or 'byte'"
            ) from e
        vocab = self._tok.get_vocab(with_added_tokens=True)
        # Added tokens may sit above get_vocab_size(); the id bound is what storage needs.
        self.vocab_size = max(vocab.values()) + 1
        self.eos_token = eos_token or self._find_eos()
        eos_id = self._tok.token_to_id(self.eos_token)
        if eos_id is None:
            raise TokenizerError(
                f"{self.path} has no token {self.eos_token!r}; pass --eos_token with one of its "
                f"special tokens: {', '.join(map(repr, self._special_tokens())) or '(none)'}"
            )
        self.eos_id = int(eos_id)

    def _special_tokens(self) -> list[str]:
        return [t.content for _, t in sorted(self._tok.get_added_tokens_decoder().items())]

    def _find_eos(self) -> str:
        # A tokenizer_config.json beside the file (as Hugging Face saves them) names it exactly.
        config = os.path.join(os.path.dirname(self.path), "tokenizer_config.json")
        if os.path.isfile(config):
            try:
                with open(config, encoding="utf-8") as f:
                    eos = json.load(f).get("eos_token")
            except (OSError, ValueError, AttributeError):
                eos = None
            if isinstance(eos, dict):  # {"content": "</s>", ...} in older files
                eos = eos.get("content")
            if isinstance(eos, str) and eos:
                return eos
        specials = self._special_tokens()
        found = [t for t in specials if t in _EOS_NAMES]
        if len(found) == 1:
            return found[0]
        listed = ", ".join(map(repr, found or specials)) or "(none)"
        raise TokenizerError(
            f"cannot tell the end-of-document token of {self.path} "
            f"({'several candidates' if found else 'no usual EOS token'}: {listed}); name it "
            f"with --eos_token=TOKEN"
        )

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text`: int32 [n]; no special tokens (BOS, ...) are added."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`encode` of each text, in parallel over the texts (Rust threads)."""
        encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r}, eos_token={self.eos_token!r})"


def load_tokenizer(spec: str, eos_token: str = "") -> ByteTokenizer | HFTokenizer:
    """ "byte" for the built-in byte tokenizer, else the path of a Hugging Face tokenizer.json.
    `eos_token` names the end-of-document token of a tokenizer.json when it is ambiguous."""
    if spec == "byte":
        if eos_token:
            raise TokenizerError(
                f"eos_token={eos_token!r} only applies to a tokenizer.json; the byte tokenizer's "
                f"EOS is id {ByteTokenizer.EOS}. Drop --eos_token"
            )
        return ByteTokenizer()
    if not spec:
        raise TokenizerError("no tokenizer given: pass 'byte' or the path of a tokenizer.json")
    return HFTokenizer(spec, eos_token)


def tokenizer_fingerprint(spec: str) -> tuple[str, str]:
    """(kind, sha256) of "byte" or a tokenizer.json path, without parsing the file: what a run
    compares with the manifests of its corpora."""
    if spec == "byte":
        return ByteTokenizer.kind, ByteTokenizer.sha256
    try:
        with open(spec, "rb") as f:
            return HFTokenizer.kind, hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        raise TokenizerError(
            f"cannot read tokenizer {spec!r} ({e.strerror}); set data.tokenizer to 'byte', to the "
            "tokenizer.json the corpora were built with, or to '' to accept theirs"
        ) from e


# ---------------------------------------------------------------------------------------------
# The tokenizer an artefact was made with (corpus, training workdir, params checkpoint)

RECORD_FILE = "tokenizer_record.json"
HF_FILE = "tokenizer.json"
_HF_COMPANIONS = ("tokenizer_config.json", "special_tokens_map.json")


def tokenizer_record(tok: ByteTokenizer | HFTokenizer) -> dict:
    """What identifies `tok`: {"kind", "sha256", "vocab_size", "eos_id", "eos_token"}."""
    return {
        "kind": tok.kind,
        "sha256": tok.sha256,
        "vocab_size": int(tok.vocab_size),
        "eos_id": int(tok.eos_id),
        "eos_token": getattr(tok, "eos_token", None),
    }


def save_tokenizer(tok: ByteTokenizer | HFTokenizer, directory: str | os.PathLike) -> None:
    """Records `tok` in `directory`: RECORD_FILE, and for a tokenizer.json a copy of it (and of
    its tokenizer_config.json / special_tokens_map.json when they sit beside it), so whoever
    reads the artefact later decodes with the same tokenizer."""
    directory = os.fspath(directory)
    record = tokenizer_record(tok)
    if isinstance(tok, HFTokenizer):
        copy_tokenizer_files(os.path.dirname(tok.path), directory, main=tok.path)
    write_tokenizer_record(directory, record)


def copy_tokenizer_files(src_dir: str, dst_dir: str, main: str | None = None) -> bool:
    """Copies a tokenizer.json (`main`, default src_dir/tokenizer.json) and its companions into
    dst_dir; False if there is none."""
    import shutil

    main = main or os.path.join(src_dir, HF_FILE)
    if not os.path.isfile(main):
        return False
    if os.path.abspath(main) != os.path.abspath(os.path.join(dst_dir, HF_FILE)):
        shutil.copyfile(main, os.path.join(dst_dir, HF_FILE))
    for name in _HF_COMPANIONS:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(
            os.path.join(dst_dir, name)
        ):
            shutil.copyfile(src, os.path.join(dst_dir, name))
    return True


def write_tokenizer_record(directory: str, record: dict) -> None:
    path = os.path.join(directory, RECORD_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def read_tokenizer_record(directory: str | os.PathLike) -> dict | None:
    """The RECORD_FILE of an artefact directory, or None when it records no tokenizer (made by
    an older lingjax, or converted from a Hugging Face directory without a tokenizer.json)."""
    path = os.path.join(os.fspath(directory), RECORD_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict) or record.get("kind") not in ("byte", "hf"):
            raise ValueError("no 'kind' of byte or hf")
        str(record["sha256"])
    except (OSError, ValueError, KeyError) as e:
        raise TokenizerError(
            f"{path} is not a tokenizer record ({e}); delete it and pass --tokenizer explicitly"
        ) from e
    return record


def describe(kind: str, sha256: str) -> str:
    return "byte" if kind == "byte" else f"a tokenizer.json with sha256 {sha256[:12]}"


def recorded_tokenizer(directory: str | os.PathLike, spec: str = "") -> ByteTokenizer | HFTokenizer:
    """The tokenizer to read or write text for an artefact: `spec` ("byte" or a tokenizer.json)
    if given, else the one the artefact records. TokenizerError, with the fix, if the artefact
    records none and `spec` is empty, if `spec` differs from the recorded one, or if the record
    names a tokenizer.json the directory no longer holds."""
    directory = os.fspath(directory)
    record = read_tokenizer_record(directory)
    if spec:
        tok = load_tokenizer(spec)
        # The byte tokenizer has no file to hash, and "" records an unknown hash (a corpus
        # written without one): then the kinds must agree.
        differs = record is not None and (
            tok.kind != record["kind"]
            or (tok.kind != "byte" and record["sha256"] and tok.sha256 != record["sha256"])
        )
        if differs:
            raise TokenizerError(
                f"--tokenizer={spec} is {describe(tok.kind, tok.sha256)}, but {directory} was "
                f"made with {describe(record['kind'], record['sha256'])}; drop --tokenizer to use "
                "the recorded one"
            )
        return tok
    if record is None:
        raise TokenizerError(
            f"{directory} records no tokenizer ({RECORD_FILE}); pass --tokenizer=byte or "
            "--tokenizer=PATH/tokenizer.json (the one the model was trained with)"
        )
    if record["kind"] == "byte":
        return ByteTokenizer()
    path = os.path.join(directory, HF_FILE)
    if not os.path.isfile(path):
        raise TokenizerError(
            f"{directory} was made with {describe('hf', record['sha256'])} but holds no "
            f"{HF_FILE}; pass --tokenizer=PATH/tokenizer.json (that file)"
        )
    tok = HFTokenizer(path, record.get("eos_token") or "")
    if tok.sha256 != record["sha256"]:
        raise TokenizerError(
            f"{path} has sha256 {tok.sha256[:12]}, but {RECORD_FILE} says "
            f"{record['sha256'][:12]}; the file was replaced: pass --tokenizer explicitly"
        )
    return tok
