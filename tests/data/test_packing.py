"""pack_window on hand-computed examples."""

import numpy as np

from lingjax.data.packing import pack_window


def _check(out, **expected):
    for key, value in expected.items():
        assert out[key].dtype == np.int32, key
        np.testing.assert_array_equal(out[key], np.array(value, np.int32), err_msg=key)


def test_documents_and_a_piece_spanning_rows():
    # Stream 10 11 12 EOS | 20 21 EOS | 30 31 (the start of a longer document); rows of 4 inputs
    # overlap by one token: row0 = stream[0:5], row1 = stream[4:9].
    pieces = [np.array([10, 11, 12, 1]), np.array([20, 21, 1], np.uint16), np.array([30, 31])]
    out = pack_window(pieces, num_rows=2, seq_len=4)
    _check(
        out,
        tokens=[[10, 11, 12, 1], [20, 21, 1, 30]],
        labels=[[11, 12, 1, -1], [21, 1, -1, 31]],
        segment_ids=[[1, 1, 1, 1], [1, 1, 1, 2]],
        positions=[[0, 1, 2, 3], [0, 1, 2, 0]],
    )


def test_long_document_restarts_positions_each_row():
    out = pack_window([np.arange(40, 49)], num_rows=2, seq_len=4)
    _check(
        out,
        tokens=[[40, 41, 42, 43], [44, 45, 46, 47]],
        labels=[[41, 42, 43, 44], [45, 46, 47, 48]],
        segment_ids=[[1, 1, 1, 1], [1, 1, 1, 1]],
        positions=[[0, 1, 2, 3], [0, 1, 2, 3]],
    )


def test_padding_tail():
    out = pack_window([np.array([5, 6, 1])], num_rows=2, seq_len=4)
    _check(
        out,
        tokens=[[5, 6, 1, 0], [0, 0, 0, 0]],
        labels=[[6, 1, -1, -1], [-1, -1, -1, -1]],
        segment_ids=[[1, 1, 1, 0], [0, 0, 0, 0]],
        positions=[[0, 1, 2, 0], [0, 0, 0, 0]],
    )


def test_single_token_documents():
    out = pack_window([np.array([1])] * 3 + [np.array([7, 1])], num_rows=1, seq_len=4)
    _check(
        out,
        tokens=[[1, 1, 1, 7]],
        labels=[[-1, -1, -1, 1]],
        segment_ids=[[1, 2, 3, 4]],
        positions=[[0, 0, 0, 0]],
    )


def test_empty_window_is_all_padding():
    out = pack_window([], num_rows=2, seq_len=3)
    _check(
        out,
        tokens=[[0, 0, 0]] * 2,
        labels=[[-1, -1, -1]] * 2,
        segment_ids=[[0, 0, 0]] * 2,
        positions=[[0, 0, 0]] * 2,
    )
