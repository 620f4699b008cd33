"""A corrupt or partial newest checkpoint is reported, moved aside, and the previous one is
restored (state, data-iterator state and monitor all from that step); if nothing can be
restored, the error lists why and no file is moved. Damage that Orbax would read without a word
(bytes overwritten in place in the array data) is caught by the checksums every save records;
one line per damaged checkpoint is printed, no traceback."""

import os
import pathlib
import shutil

import jax
import pytest

from lingjax.checkpoint import Checkpointer, CheckpointError
from tests.support.checkpoints import CountingIterator, assert_trees_equal, small_state

ABSTRACT = jax.eval_shape(lambda: small_state(0))
ITEMS = ("state", "monitor")  # saved without a config item


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> str:
    """Checkpoints 1, 2, 3 (the iterator state of step s is {"i": 10 * s})."""
    root = str(tmp_path_factory.mktemp("pristine") / "ck")
    ckpt = Checkpointer(root)
    for s in (1, 2, 3):
        ckpt.save(s, small_state(s), data_iter=CountingIterator(10 * s), monitor={"s": s})
    ckpt.wait()
    ckpt.close()
    return root


def _largest_file(path: str) -> str:
    files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    return max(files, key=os.path.getsize)


def _truncate(step_dir: str) -> None:
    big = _largest_file(os.path.join(step_dir, "state"))
    with open(big, "r+b") as f:
        f.truncate(os.path.getsize(big) // 2)


def _overwrite_in_place(step_dir: str) -> None:
    # A flipped block or a torn write on a network file system: same size, other bytes.
    big = _largest_file(os.path.join(step_dir, "state"))
    with open(big, "r+b") as f:
        f.seek(os.path.getsize(big) // 2)
        f.write(os.urandom(512))


def _delete_chunk(step_dir: str) -> None:
    os.remove(_largest_file(os.path.join(step_dir, "state")))


def _wrong_shapes(step_dir: str) -> None:
    # A different model's state under the same step: a half-written config change, or a copy
    # from another run.
    root = os.path.dirname(step_dir)
    shutil.rmtree(step_dir)
    ckpt = Checkpointer(root)
    ckpt.save(3, small_state(3, rows=48), data_iter=CountingIterator(30), monitor={"s": 3})
    ckpt.wait()
    ckpt.close()


CORRUPTIONS = {
    "truncated_file": (_truncate, "bytes, the save wrote"),
    "overwritten_in_place": (_overwrite_in_place, "fails its checksum"),
    "deleted_chunk": (_delete_chunk, "is missing (the save wrote it)"),
    "missing_item": (lambda d: shutil.rmtree(os.path.join(d, "data_iter")), "'data_iter'"),
    "missing_commit_marker": (
        lambda d: os.remove(os.path.join(d, "commit_success.txt")),
        "commit marker",
    ),
    "unreadable_metadata": (
        lambda d: pathlib.Path(d, "_CHECKPOINT_METADATA").write_text('{"item_h'),
        "_CHECKPOINT_METADATA",
    ),
    "unreadable_item_metadata": (
        lambda d: pathlib.Path(d, "state", "_METADATA").write_bytes(b"\x00garbage"),
        "state/_METADATA",
    ),
    "wrong_shapes": (_wrong_shapes, "shape"),
}


@pytest.mark.parametrize("mode", sorted(CORRUPTIONS))
def test_corrupt_latest_falls_back_to_the_previous_checkpoint(pristine, tmp_path, mode, capfd):
    root = str(tmp_path / "ck")
    shutil.copytree(pristine, root)
    corrupt, needle = CORRUPTIONS[mode]
    corrupt(os.path.join(root, "3"))

    logged = []
    ckpt = Checkpointer(root, log=logged.append)
    it = CountingIterator()
    r = ckpt.restore_latest(ABSTRACT, data_iter=it, items=ITEMS)
    assert r.step == 2
    assert [s for s, _ in r.failed] == [3]
    assert needle in r.failed[0][1], r.failed
    assert_trees_equal(r.state, small_state(2))
    assert it.i == 20 and r.monitor == {"s": 2}
    assert len(logged) == 1 and "checkpoint 3 is damaged" in logged[0]  # which, why, what instead
    assert "using checkpoint 2" in logged[0]
    assert "Traceback" not in "".join(capfd.readouterr())  # one line, not the storage layer's
    # Moved aside (kept for inspection), so step 3 can be saved again.
    assert os.listdir(root + ".discarded") == ["3.corrupt"]
    assert ckpt.all_steps() == [1, 2]
    assert ckpt.save(3, small_state(3), data_iter=it, monitor={"s": 3})
    ckpt.wait()
    assert ckpt.restore_latest(ABSTRACT, items=ITEMS).step == 3
    ckpt.close()


def test_a_save_killed_midway_is_ignored_and_cleaned_up(pristine, tmp_path):
    root = str(tmp_path / "ck")
    shutil.copytree(pristine, root)
    # What SIGKILL during an async save leaves: the step still in its temporary directory.
    os.rename(os.path.join(root, "3"), os.path.join(root, "3.orbax-checkpoint-tmp"))
    ckpt = Checkpointer(root)
    r = ckpt.restore_latest(ABSTRACT, data_iter=CountingIterator(), items=ITEMS)
    assert r.step == 2 and not r.failed
    assert sorted(os.listdir(root)) == ["1", "2"]
    ckpt.close()


def test_nothing_restorable_is_an_error_that_moves_nothing(pristine, tmp_path):
    root = str(tmp_path / "ck")
    shutil.copytree(pristine, root)
    for s in (1, 2, 3):
        os.remove(os.path.join(root, str(s), "commit_success.txt"))
    ckpt = Checkpointer(root)
    with pytest.raises(CheckpointError) as e:
        ckpt.restore_latest(ABSTRACT, data_iter=CountingIterator(), items=ITEMS)
    msg = str(e.value)
    assert all(f"step {s}: " in msg for s in (1, 2, 3)) and "new --workdir" in msg
    assert sorted(os.listdir(root)) == ["1", "2", "3"]
    assert not os.path.exists(root + ".discarded")
    ckpt.close()
