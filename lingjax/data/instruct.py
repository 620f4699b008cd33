"""Post-training data: conversations (SFT), preference pairs (DPO) and prompts with answers
(RL), from JSON-lines files, tokenized through a chat template (chat.py).

    data = read_instruct(["sft.jsonl"], tokenizer, template, seq_len=512)   # InstructData
    it = InstructIterator(data, seq_len=512, rows=8, seed=0)               # batches, forever
    batch = next(it); state = it.get_state(); it.set_state(state)           # resumable

One JSON object a line; the first line decides the file's kind, every line must be of it:
  sft     {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  dpo     {"prompt": str | messages, "chosen": str, "rejected": str}
          (a string prompt is one user message; chosen/rejected are the assistant's answers)
  prompts {"prompt": str | messages, "answer": str | [str, ...], ...}   (RL: any other keys
          travel with the prompt to the reward function, e.g. "tests" for code)
A bad line is one InstructError naming file:line and the fix: not JSON, a missing or unknown
role, an empty response, no assistant message, a sequence longer than train.seq_len.

Batches (SFT and DPO) pack WHOLE sequences into rows (next fit: a sequence that does not fit
the rest of a row starts the next), never splitting one: int32 [R, L] tokens, labels (the next
token where that token is trained, i.e. the assistant's; -1 elsewhere), segment_ids (1, 2, ...
per sequence; 0 = padding), positions; source_ids [R] (0). DPO adds, for the P = R pair slots of
a batch, pair [R, L] (the slot of each token's pair, -1 = none; numbered over the global batch:
process p's slots are p R .. p R + R - 1) and side [R, L] (0 chosen, 1 rejected), pair_index
[P] (the pair's index in the data, -1 = empty slot); a pair's two sequences are always in the
same batch. The order: each epoch a seeded permutation of the
examples (the same on every process), of which process p of P takes p, p+P, ...; the state is
{"epoch", "next"} (the next example of this process's share), so resume is exact.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import grain
import numpy as np

from lingjax.data.chat import ChatError, ChatTemplate, check_messages, encode_conversation
from lingjax.data.chat import encode_prompt as _encode_prompt
from lingjax.data.corpus import CorpusError
from lingjax.data.documents import permutation

KINDS = ("sft", "dpo", "prompts")


class InstructError(CorpusError):
    """Bad post-training data: the message names file:line and the fix."""


@dataclasses.dataclass
class InstructData:
    """Tokenized examples of one kind.

    sft:     seqs[i] = (ids int32 [n], train bool [n])
    dpo:     seqs[2i], seqs[2i+1] = pair i's chosen and rejected sequences (prompt + answer)
    prompts: prompts[i] = ids int32 [n] (rendered with the generation prompt), records[i] =
             the line's object (answer, tests, ...)
    where[i] = "file:line" of example i."""

    kind: str
    where: list[str]
    seqs: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)
    prompts: list[np.ndarray] = dataclasses.field(default_factory=list)
    records: list[dict] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.where)

    def fingerprint(self) -> str:
        """Identifies the examples (their ids): a cache of per-example values keys on it."""
        import hashlib

        h = hashlib.sha256(self.kind.encode())
        for ids, train in self.seqs:
            h.update(ids.tobytes())
            h.update(np.packbits(train).tobytes())
        for p in self.prompts:
            h.update(p.tobytes())
        return h.hexdigest()[:16]


def expand_paths(spec: str | Sequence[str]) -> list[str]:
    """Files of a comma-separated list of .jsonl files, directories (their *.jsonl) and globs,
    sorted within each entry; InstructError if an entry matches nothing."""
    entries = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out = []
    for entry in filter(None, entries):
        if os.path.isdir(entry):
            found = sorted(glob.glob(os.path.join(entry, "*.jsonl")))
        else:
            found = sorted(glob.glob(entry)) if any(c in entry for c in "*?[") else [entry]
        found = [f for f in found if os.path.isfile(f)]
        if not found:
            raise InstructError(
                f"data.instruct: {entry!r} is no .jsonl file (nor a directory or glob of them)"
            )
        out += found
    if not out:
        raise InstructError("data.instruct names no files; pass the .jsonl files to train on")
    return out


def _lines(path: str) -> Iterable[tuple[str, dict]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise InstructError(f"{where}: not JSON ({e}); one JSON object a line") from None
            if not isinstance(obj, dict):
                raise InstructError(f"{where}: a line must be a JSON object")
            yield where, obj


def kind_of(obj: dict) -> str | None:
    if "messages" in obj:
        return "sft"
    if "chosen" in obj or "rejected" in obj:
        return "dpo"
    if "prompt" in obj:
        return "prompts"
    return None


def _prompt_messages(value: Any, where: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise InstructError(f'{where}: "prompt" is empty')
        return [{"role": "user", "content": value}]
    try:
        messages = check_messages(value)
    except ChatError as e:
        raise InstructError(f'{where}: "prompt": {e}') from None
    if messages[-1]["role"] == "assistant":
        raise InstructError(f'{where}: "prompt" ends with an assistant message; drop it')
    return messages


def _fits(n: int, seq_len: int, where: str, what: str) -> None:
    if n > seq_len:
        raise InstructError(
            f"{where}: the {what} has {n} tokens, more than train.seq_len={seq_len}; shorten "
            "or drop it, or raise train.seq_len"
        )


def read_instruct(
    spec: str | Sequence[str],
    tokenizer: Any,
    template: ChatTemplate,
    *,
    seq_len: int,
    kind: str | None = None,
    max_new_tokens: int = 0,
) -> InstructData:
    """Every example of the files `spec` names (expand_paths), tokenized. `kind`: the kind the
    caller needs (else taken from the first line); `max_new_tokens`: for prompts, the room a
    response needs beside the prompt in seq_len."""
    data: InstructData | None = None
    for path in expand_paths(spec):
        for where, obj in _lines(path):
            found = kind_of(obj)
            if found is None:
                raise InstructError(
                    f'{where}: neither a conversation ({{"messages": [...]}}), a preference '
                    'pair ({"prompt", "chosen", "rejected"}) nor a prompt ({"prompt", '
                    '"answer"})'
                )
            if data is None:
                if kind is not None and found != kind:
                    raise InstructError(
                        f"{where}: a {found} example, but this run needs {kind} data "
                        f"({_needs(kind)})"
                    )
                data = InstructData(kind=found, where=[])
            elif found != data.kind:
                raise InstructError(
                    f"{where}: a {found} example among {data.kind} examples; one kind per run"
                )
            try:
                _add(data, where, obj, tokenizer, template, seq_len, max_new_tokens)
            except ChatError as e:
                raise InstructError(f"{where}: {e}") from None
    if data is None:
        raise InstructError(f"data.instruct={spec!r}: the files hold no examples")
    return data


def _needs(kind: str) -> str:
    return {
        "sft": 'lines {"messages": [...]}',
        "dpo": 'lines {"prompt", "chosen", "rejected"}',
        "prompts": 'lines {"prompt", "answer"}',
    }[kind]


def _add(data, where, obj, tokenizer, template, seq_len, max_new_tokens) -> None:
    if data.kind == "sft":
        ids, train = encode_conversation(template, tokenizer, obj["messages"])
        _fits(len(ids), seq_len, where, "conversation")
        data.seqs.append((ids, train))
    elif data.kind == "dpo":
        for key in ("prompt", "chosen", "rejected"):
            if key not in obj:
                raise InstructError(f'{where}: a preference pair needs "{key}"')
        prompt = _prompt_messages(obj["prompt"], where)
        for key in ("chosen", "rejected"):
            answer = obj[key]
            if not isinstance(answer, str) or not answer.strip():
                raise InstructError(f'{where}: "{key}" must be a non-empty string')
            messages = [*prompt, {"role": "assistant", "content": answer}]
            ids, train = encode_conversation(template, tokenizer, messages)
            _fits(len(ids), seq_len, where, f"prompt with its {key} answer")
            data.seqs.append((ids, train))
    else:
        prompt = _prompt_messages(obj["prompt"], where)
        ids = _encode_prompt(template, tokenizer, prompt)
        _fits(len(ids) + max_new_tokens, seq_len, where, "prompt with max_new_tokens")
        data.prompts.append(ids)
        data.records.append(obj)
    data.where.append(where)


def instruct_tokenizer(tokenizer: str, *directories: str) -> Any:
    """The tokenizer of a post-training run: `tokenizer` (data.tokenizer: "byte" or a
    tokenizer.json) if given, else the one the first of `directories` that records one was made
    with (the run's workdir on resume, the train.init_from checkpoint), else the byte
    tokenizer. TokenizerError if `tokenizer` differs from such a record."""
    from lingjax.data.tokenizer import ByteTokenizer, read_tokenizer_record, recorded_tokenizer

    recorded = [d for d in directories if d and read_tokenizer_record(d) is not None]
    if recorded:
        return recorded_tokenizer(recorded[0], tokenizer)
    if tokenizer:
        from lingjax.data.tokenizer import load_tokenizer

        return load_tokenizer(tokenizer)
    return ByteTokenizer()


# ----------------------------------------------------------------------------- packing


def pack_sequences(
    seqs: Sequence[tuple[np.ndarray, np.ndarray]], rows: int, seq_len: int
) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
    """Whole sequences into `rows` rows of `seq_len` (next fit, in order, as many as fit):
    (batch of int32 [R, L]: tokens, labels, segment_ids, positions; [(row, segment)] of each
    packed sequence). A sequence trains token t+1 at position t where train[t+1]."""
    R, L = rows, seq_len
    out = {k: np.zeros((R, L), np.int32) for k in ("tokens", "segment_ids", "positions")}
    out["labels"] = np.full((R, L), -1, np.int32)
    placed, row, col, seg = [], 0, 0, 0
    for ids, train in seqs:
        n = len(ids)
        if col + n > L:
            row, col, seg = row + 1, 0, 0
        if row >= R:
            break
        seg += 1
        out["tokens"][row, col : col + n] = ids
        out["segment_ids"][row, col : col + n] = seg
        out["positions"][row, col : col + n] = np.arange(n)
        out["labels"][row, col : col + n - 1] = np.where(train[1:], ids[1:], -1)
        placed.append((row, seg))
        col += n
    return out, placed


class InstructIterator(grain.DatasetIterator):
    """SFT or DPO batches of one process, forever (module docstring)."""

    def __init__(
        self,
        data: InstructData,
        *,
        seq_len: int,
        rows: int,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
        epochs: int | None = None,
    ):
        """`shuffle=False, epochs=1`: every example of this process's share once, in order
        (the last batch partly empty, then StopIteration): a pass over the data."""
        super().__init__()
        if data.kind not in ("sft", "dpo"):
            raise InstructError(f"InstructIterator packs sft or dpo data, not {data.kind}")
        self.data, self.seq_len, self.rows, self.seed = data, seq_len, rows, seed
        self.process_index, self.process_count = process_index, process_count
        self.shuffle, self.epochs = shuffle, epochs
        # DPO: the reference's log-probs of every pair, fp32 [pairs, 2] (lingjax/train/dpo.py);
        # set, each batch carries its slots' as ref_logps [P, 2].
        self.ref_logps: np.ndarray | None = None
        self.epoch, self.next = 0, 0
        self._order: tuple[int, np.ndarray] | None = None
        self._fingerprint = data.fingerprint()
        if len(data) < process_count:
            raise InstructError(
                f"{len(data)} examples for {process_count} processes; every process needs one"
            )

    def _share(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            n = len(self.data)
            order = permutation(n, self.seed, epoch) if self.shuffle else np.arange(n)
            self._order = (epoch, order[self.process_index :: self.process_count])
        return self._order[1]

    def _sequences(self, i: int) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.data.kind == "sft":
            return [self.data.seqs[i]]
        return [self.data.seqs[2 * i], self.data.seqs[2 * i + 1]]

    def __next__(self) -> dict[str, np.ndarray]:
        R, L = self.rows, self.seq_len
        taken: list[int] = []
        seqs: list[tuple[np.ndarray, np.ndarray]] = []
        epoch, nxt = self.epoch, self.next
        row, col = 0, 0
        while True:
            if self.epochs is not None and epoch >= self.epochs:
                if not taken:
                    raise StopIteration
                break
            share = self._share(epoch)
            if nxt >= len(share):
                epoch, nxt = epoch + 1, 0
                continue
            i = int(share[nxt])
            parts = self._sequences(i)
            # Would they fit (next fit, as pack_sequences places them)?
            r, c = row, col
            for ids, _ in parts:
                if c + len(ids) > L:
                    r, c = r + 1, 0
                c += len(ids)
            if r >= R or (self.data.kind == "dpo" and len(taken) >= R):
                if not taken:
                    raise InstructError(
                        f"{self.data.where[i]}: its two sequences do not fit one batch of "
                        f"{R} row(s) x {L} tokens; raise train.batch_size or train.seq_len"
                    )
                break
            row, col = r, c
            taken.append(i)
            seqs += parts
            nxt += 1
        self.epoch, self.next = epoch, nxt
        batch, placed = pack_sequences(seqs, R, L)
        batch["source_ids"] = np.zeros(R, np.int32)
        if self.data.kind == "dpo":
            pair = np.full((R, L), -1, np.int32)
            side = np.zeros((R, L), np.int32)
            first = self.process_index * R  # pair slots are numbered over the global batch
            for k, (r, seg) in enumerate(placed):
                on = batch["segment_ids"][r] == seg
                pair[r, on] = first + k // 2
                side[r, on] = k % 2
            index = np.full(R, -1, np.int32)
            index[: len(taken)] = taken
            batch.update(pair=pair, side=side, pair_index=index)
            if self.ref_logps is not None:
                ref = np.zeros((R, 2), np.float32)
                ref[: len(taken)] = self.ref_logps[taken]
                batch["ref_logps"] = ref
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "next": self.next, "examples": self._fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("examples") != self._fingerprint:
            raise InstructError(
                "the checkpoint's data position belongs to other post-training examples "
                "(data.instruct or the chat template changed); resume with the same data, or "
                "start a new run"
            )
        self.epoch, self.next = int(state["epoch"]), int(state["next"])
