"""The golden files (tests/golden/regenerate.py says what each holds) match the code. A
difference fails with a readable diff; regenerate with `.venv/bin/python -m
tests.golden.regenerate` when the change is intended, and commit both."""

import difflib
import os

import pytest

from tests.golden.regenerate import GOLDEN, golden_files

FILES = golden_files()


@pytest.mark.parametrize("rel", sorted(FILES))
def test_golden_file_matches_the_code(rel):
    path = os.path.join(GOLDEN, rel)
    assert os.path.isfile(path), (
        f"tests/golden/{rel} is missing; run python -m tests.golden.regenerate"
    )
    with open(path) as f:
        want = f.read()
    got = FILES[rel]()
    if got != want:
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(keepends=True),
                got.splitlines(keepends=True),
                f"tests/golden/{rel} (committed)",
                "the code now",
                n=1,
            )
        )
        pytest.fail(
            f"tests/golden/{rel} differs from the code:\n{diff[:6000]}\nIf the change is "
            "intended, run `.venv/bin/python -m tests.golden.regenerate` and commit the diff."
        )


def test_the_regenerated_set_is_exactly_the_committed_set():
    committed = {
        f"{sub}/{name}"
        for sub in ("presets", "params", "hf")
        if os.path.isdir(os.path.join(GOLDEN, sub))
        for name in os.listdir(os.path.join(GOLDEN, sub))
    }
    assert committed == set(FILES)
