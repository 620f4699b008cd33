"""Packing: a window of a document stream -> rows with segment ids and positions.

Concatenate-then-split: a source's documents (each ending with EOS) are laid end to end in one
stream, and row k of the stream is the slice [k*L, k*L + L + 1); a window of R consecutive rows
is packed at once. Rows overlap by one token so the last label of a row is the first input of
the next and every in-document transition is trained exactly once. A document longer than a row
simply continues in the next row. Padding only fills the tail of the last row of an epoch (and
whole rows past the end of a finite stream, e.g. a validation split).

Letters: R rows in the batch, L sequence length (inputs per row), N = R*L + 1 window tokens.

Every output is int32 [R, L]:
  tokens       input ids (0 at padding)
  labels       the next token of the same document, -1 where the next token starts another
               document or is padding (so EOS is a target, but never predicts across documents)
  segment_ids  1, 2, ... for the document pieces of a row in order, 0 at padding; attention
               stays within equal nonzero ids, so it never crosses documents
  positions    index inside the document's piece in this row: 0 at each document start and at
               the row start (a row never attends to an earlier row, so a continued document
               restarts at 0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_window(pieces: Sequence[np.ndarray], num_rows: int, seq_len: int) -> dict[str, np.ndarray]:
    """Packs consecutive document pieces into rows (module docstring has the layout).

    Args:
      pieces: each a 1-D int array, a piece of ONE document, in stream order; consecutive pieces
        are different documents. Their total length must be <= num_rows * seq_len + 1; the rest
        of the window is padding.
      num_rows: R, rows in the batch.
      seq_len: L, inputs per row.

    Returns:
      dict of int32 [R, L] arrays: tokens, labels, segment_ids, positions.
    """
    R, L = num_rows, seq_len
    N = R * L + 1
    lens_K = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    n = int(lens_K.sum())
    assert n <= N, (n, N)

    flat_N = np.zeros(N, np.int32)
    if n:
        np.concatenate(pieces, out=flat_N[:n], casting="unsafe")
    # Document number of each window token (-1 = padding) and the window offset where that
    # token's document (piece) starts.
    doc_N = np.full(N, -1, np.int32)
    doc_N[:n] = np.repeat(np.arange(len(pieces), dtype=np.int32), lens_K)
    start_N = np.zeros(N, np.int32)
    start_N[:n] = np.repeat((np.cumsum(lens_K) - lens_K).astype(np.int32), lens_K)

    T = R * L
    doc_RL = doc_N[:T].reshape(R, L)
    next_doc_RL = doc_N[1:].reshape(R, L)
    valid_RL = doc_RL >= 0

    tokens = flat_N[:T].reshape(R, L)
    labels = np.where(valid_RL & (next_doc_RL == doc_RL), flat_N[1:].reshape(R, L), -1)
    # Documents are numbered in stream order, so within a row they count up from the first.
    segment_ids = np.where(valid_RL, doc_RL - doc_RL[:, :1] + 1, 0)
    # A piece starts at its document's start or at the row start, whichever is later.
    offset_T = np.arange(T, dtype=np.int32)
    row_start_T = offset_T - offset_T % L
    positions = offset_T - np.maximum(start_N[:T], row_start_T)
    positions = np.where(valid_RL, positions.reshape(R, L), 0)
    return {
        "tokens": tokens,
        "labels": labels.astype(np.int32, copy=False),
        "segment_ids": segment_ids.astype(np.int32, copy=False),
        "positions": positions.astype(np.int32, copy=False),
    }
