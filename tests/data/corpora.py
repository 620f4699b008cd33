"""Tiny hand-written corpora shared by the data tests."""

import numpy as np

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "x",
    "",  # empty: skipped by write_corpus
    "# a comment that is longer than one packed row, so that it spans several rows\n" * 3,
    "class Point:\n    '''A point in the plane.'''\n\n    x: float = 0.0\n    y: float = 0.0\n",
    "print('héllo wörld 🙂')\n",
]

# Documents whose tokens say where they come from: document d holds ids 1000*(d+1) + 0, 1, ...
# (all distinct), so a test can tell the document and offset of every non-EOS token.
UNIQUE_VOCAB = 1 << 20
UNIQUE_LENGTHS = [3, 1, 17, 40, 2, 9, 25, 6, 64, 11, 5, 30, 1, 8, 19, 70, 4, 13, 7, 22]


def unique_docs() -> list[np.ndarray]:
    return [1000 * (d + 1) + np.arange(n) for d, n in enumerate(UNIQUE_LENGTHS)]
