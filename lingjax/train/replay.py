"""The batch feeder of the loop: the data stream plus a queue of skipped batches to feed again.

    feeder = RetryFeeder(make_train_iterator(...))
    batch, entry = feeder.take(step)         # a due retry if there is one, else the stream
    feeder.push(batch, due=step + 8, attempts=1, origin=step)

A Grain `DatasetIterator`, so it is saved per process with the checkpoint by
`grain.checkpoint.CheckpointSave` like any data iterator: its state is the stream's state plus the
queued batches themselves (each process queues its own share of a global batch). Storing the
batches rather than a way to recompute them works for any pipeline (mixtures, multiprocessing)
and costs little: the queue holds a few batches (at most about retry_delay * max_retries).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
from typing import Any

import grain
import numpy as np

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class RetryEntry:
    batch: Batch
    due: int  # 0-based step at (or after) which to feed it
    attempts: int  # attempts already made
    origin: int  # the step that first saw it


def _encode(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode(s: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(s)), allow_pickle=False)


class RetryFeeder(grain.DatasetIterator):
    """The stream's batches, with queued retries served first once they are due."""

    def __init__(self, stream: grain.DatasetIterator):
        super().__init__(stream)
        self._stream = stream
        self._queue: list[RetryEntry] = []  # sorted by (due, origin)

    @property
    def queue(self) -> tuple[RetryEntry, ...]:
        return tuple(self._queue)

    def take(self, step: int) -> tuple[Batch, RetryEntry | None]:
        """The batch for `step`: the earliest due retry, else the next stream batch."""
        self._assert_not_closed()
        if self._queue and self._queue[0].due <= step:
            entry = self._queue.pop(0)
            return entry.batch, entry
        return next(self._stream), None

    def __next__(self) -> Batch:
        return next(self._stream)

    def push(self, batch: Batch, *, due: int, attempts: int, origin: int) -> None:
        self._queue.append(RetryEntry(batch, due, attempts, origin))
        self._queue.sort(key=lambda e: (e.due, e.origin))

    def drop_from(self, origin: int) -> int:
        """Forget queued batches first seen at step >= `origin`; returns how many."""
        keep = [e for e in self._queue if e.origin < origin]
        dropped = len(self._queue) - len(keep)
        self._queue = keep
        return dropped

    # A cheap in-memory bookmark (no encoding): the loop takes one before each step so that a
    # rollback can hand back the batch of a step it discards.
    def mark(self) -> tuple[Any, tuple[RetryEntry, ...]]:
        return copy.deepcopy(self._stream.get_state()), tuple(self._queue)

    def reset(self, mark: tuple[Any, tuple[RetryEntry, ...]]) -> None:
        stream_state, queue = mark
        self._stream.set_state(copy.deepcopy(stream_state))
        self._queue = list(queue)

    def get_state(self) -> dict[str, Any]:
        return {
            "stream": self._stream.get_state(),
            "queue": [
                {
                    "due": e.due,
                    "attempts": e.attempts,
                    "origin": e.origin,
                    "batch": {k: _encode(v) for k, v in e.batch.items()},
                }
                for e in self._queue
            ],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if "stream" not in state or "queue" not in state:
            raise ValueError(
                "this data-iterator state was not written by the lingjax training loop (no "
                "'stream'/'queue' keys); resume from a checkpoint of lingjax.train.train"
            )
        self._stream.set_state(state["stream"])
        self._queue = [
            RetryEntry(
                batch={k: _decode(v) for k, v in q["batch"].items()},
                due=int(q["due"]),
                attempts=int(q["attempts"]),
                origin=int(q["origin"]),
            )
            for q in state["queue"]
        ]

    def __str__(self) -> str:
        return f"RetryFeeder({self._stream}, queued={len(self._queue)})"
