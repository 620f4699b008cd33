"""Task files and multiple-choice modes: the texts each mode scores, the choice each
normalisation picks on hand-made log-likelihoods, completion metrics, and bad task files named
by file and line."""

import json
import math

import numpy as np
import pytest

from lingjax.data import ByteTokenizer
from lingjax.evaluate.scoring import Scores
from lingjax.evaluate.tasks import TaskFileError, choice_texts, evaluate_task, read_task

EX = {
    "question": "The sky is",
    "choices": ["green", "blue"],
    "answer": 1,
    "blank": "The ___ sky is up.",
}


def test_each_mode_scores_its_text():
    assert choice_texts(EX, "label") == [
        ("The sky is\nA. green\nB. blue\nAnswer:", " A"),
        ("The sky is\nA. green\nB. blue\nAnswer:", " B"),
    ]
    assert choice_texts(EX, "cloze") == [
        ("The sky is\nAnswer:", " green"),
        ("The sky is\nAnswer:", " blue"),
    ]
    assert choice_texts(EX, "blank") == [("The ", "green sky is up."), ("The ", "blue sky is up.")]
    plain = {k: v for k, v in EX.items() if k != "blank"}
    assert choice_texts(plain, "blank") == choice_texts(plain, "cloze")


class FakeScorer:
    """Returns fixed log-likelihoods and records the token pairs it was asked for."""

    def __init__(self, logprob, greedy=None):
        self.logprob, self.greedy = np.asarray(logprob, float), greedy

    def __call__(self, pairs):
        self.pairs = pairs
        tokens = np.asarray([len(x) for _, x in pairs])
        greedy = np.ones(len(pairs), bool) if self.greedy is None else np.asarray(self.greedy)
        return Scores(self.logprob, tokens, greedy)


def test_normalisations_pick_by_sum_per_token_and_per_byte(tmp_path):
    path = tmp_path / "sky.jsonl"
    path.write_text(json.dumps(EX) + "\n")
    task = read_task(str(path))
    assert task.name == "sky" and task.kind == "choice"
    # Cloze continuations " green" (6 bytes) and " blue" (5 bytes) with log-likelihoods where
    # the sum and the per-byte mean disagree: green -5.5 (-0.917/byte), blue -5.0 (-1.0/byte).
    scorer = FakeScorer([-5.5, -5.0])
    got = evaluate_task(task, scorer, ByteTokenizer(), mode="cloze")
    assert got["acc"] == 1.0  # sum: blue (-5.0) wins
    assert got["acc_byte"] == 0.0  # per byte: green (-0.917) wins
    assert got["acc_token"] == 0.0  # byte tokens: per token == per byte
    tok = ByteTokenizer()
    ctx, cont = scorer.pairs[0]
    assert ctx[0] == tok.bos_id and tok.decode(ctx[1:]) == "The sky is\nAnswer:"
    assert tok.decode(cont) == " green"


def test_completion_tasks_report_exact_match_and_bits_per_byte(tmp_path):
    path = tmp_path / "copy.jsonl"
    rows = [
        {"context": "abc abc ab", "continuation": "c"},
        {"context": "xy xy x", "continuation": "yz"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = evaluate_task(
        read_task(str(path)), FakeScorer([-1.0, -2.0], [True, False]), ByteTokenizer()
    )
    assert got["exact"] == 0.5
    assert got["bits_per_byte"] == pytest.approx(3.0 / 3 / math.log(2))


@pytest.mark.parametrize(
    "lines, match",
    [
        (
            ['{"question": "q", "choices": ["a", "b"], "answer": 1}', "{oops"],
            r"t.jsonl:2: not valid JSON",
        ),
        (['{"question": "q", "choices": ["a"], "answer": 0}'], r"t.jsonl:1: field 'choices'"),
        (['{"question": "q", "choices": ["a", "b"], "answer": 2}'], r"t.jsonl:1: field 'answer'"),
        (
            ['{"question": "q", "choices": ["a", "b"], "answer": 0, "blank": "no gap"}'],
            r"t.jsonl:1: field 'blank'",
        ),
        (['{"context": "a", "continuation": ""}'], r"t.jsonl:1: field 'continuation'"),
        (['{"prompt": "a"}'], r"t.jsonl:1: an example needs"),
        (["", "  "], r"t.jsonl: no examples"),
        (
            [
                '{"context": "a", "continuation": "b"}',
                '{"question": "q", "choices": ["a", "b"], "answer": 0}',
            ],
            "mixes multiple-choice and completion",
        ),
    ],
)
def test_bad_task_files_name_the_file_line_and_field(tmp_path, lines, match):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskFileError, match=match):
        read_task(str(path))


def test_a_missing_task_file_is_named(tmp_path):
    with pytest.raises(TaskFileError, match="no such task file"):
        read_task(str(tmp_path / "none.jsonl"))
