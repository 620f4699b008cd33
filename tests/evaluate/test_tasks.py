"""Task files: the texts each multiple-choice mode scores, the choice each normalisation picks
on hand-made log-likelihoods, completion metrics, ICLiP prompts and answer extraction, pass@k
from counted samples, greedy generation on a model, and bad task files named by file and
line."""

import json
import math
import re

import jax
import numpy as np
import pytest

from lingjax import configs
from lingjax.data import ByteTokenizer
from lingjax.evaluate import generation
from lingjax.evaluate.generation import generate as lingjax_generate
from lingjax.evaluate.scoring import Scorer, Scores
from lingjax.evaluate.stats import pass_at_k
from lingjax.evaluate.tasks import (
    ICLiP,
    TaskFileError,
    choice_texts,
    evaluate_generative,
    evaluate_task,
    extract_answer,
    iclip_prompt,
    read_task,
)
from lingjax.model import init_variables

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
        (['{"text": "a"}'], r"t.jsonl:1: an example needs"),
        (['{"prompt": "a"}'], r"t.jsonl:1: field 'answer' must be a string"),
        (["", "  "], r"t.jsonl: no examples"),
        (
            [
                '{"context": "a", "continuation": "b"}',
                '{"question": "q", "choices": ["a", "b"], "answer": 0}',
            ],
            "mixes kinds of examples",
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


def _write(tmp_path, name, lines):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return str(path)


def test_iclip_prompts_and_answer_extraction(tmp_path):
    header = {
        "iclip": {"instruction": "Add.", "shots": 2, "answer_prefix": " =", "regex": r"(-?\d+)"}
    }
    rows = [
        {"prompt": "1+1", "answer": "2"},
        {"prompt": "2+3", "answer": ["5", "five"]},
        {"prompt": "4+4", "answer": "8"},
    ]
    task = read_task(_write(tmp_path, "add", [header, *rows]))
    assert task.kind == "generative" and task.iclip.shots == 2
    assert iclip_prompt(task, rows[2]) == "Add.\n\n1+1 = 2\n\n2+3 = 5\n\n4+4 ="
    c = task.iclip
    assert extract_answer(" 8 because\n9", c) == "8"
    assert extract_answer(" no digits", c) == ""
    plain = ICLiP()  # cut at the newline, stripped
    assert extract_answer("  yes \nno", plain) == "yes"
    assert extract_answer("abc", ICLiP(stop=("b",))) == "a"


def test_pass_at_k_counts_correct_samples(tmp_path, monkeypatch):
    header = {"iclip": {"samples": 4, "temperature": 1.0, "k": [1, 2, 4], "max_new_tokens": 4}}
    rows = [{"prompt": "a", "answer": "x"}, {"prompt": "b", "answer": "y"}]
    task = read_task(_write(tmp_path, "gen", [header, *rows]))
    tok = ByteTokenizer()
    # Sample s of the batch answers "x" for prompt a when s < 3, and "y" for b only when s == 0.
    outputs = iter([["x", "y"], ["x", "n"], ["x", "n"], ["n", "n"]])

    class Out:
        def __init__(self, texts):
            self.texts = texts

        def as_lists(self):
            return [tok.encode(t).tolist() for t in self.texts]

    monkeypatch.setattr(generation, "generate", lambda *a, **k: Out(next(outputs)))
    got = evaluate_generative(task, None, None, tok)
    for k in (1, 2, 4):
        want = (pass_at_k(4, 3, k) + pass_at_k(4, 1, k)) / 2
        assert got[f"pass@{k}"] == pytest.approx(want)
    assert "exact" not in got and got["examples"] == 2


def test_greedy_generation_on_a_model(tmp_path):
    cfg = configs.get("tiny", **{"model.num_layers": 1}).model
    variables = init_variables(cfg, jax.random.key(0))
    tok = ByteTokenizer()
    rows = [{"prompt": p, "answer": "?"} for p in ("def f(", "import ", "class A")]
    task = read_task(
        _write(tmp_path, "g", [{"iclip": {"max_new_tokens": 3, "stop": ["\u0000"]}}, *rows])
    )
    # Plant the model's own greedy continuations as the answers of the first two.
    prompts = [[tok.bos_id, *tok.encode(iclip_prompt(task, ex)).tolist()] for ex in rows]
    texts = [
        tok.decode(ids)
        for ids in lingjax_generate(
            cfg, variables, prompts, max_new_tokens=3, eos_id=tok.eos_id
        ).as_lists()
    ]
    planted = [
        {**rows[0], "answer": texts[0].strip()},
        {**rows[1], "answer": [texts[1].strip()]},
        {**rows[2], "answer": "\u2603"},
    ]
    task = read_task(
        _write(tmp_path, "g", [{"iclip": {"max_new_tokens": 3, "stop": ["\u0000"]}}, *planted])
    )
    scorer = Scorer(cfg, variables, rows=2, seq_len=64)
    got = evaluate_task(task, scorer, tok)
    assert got["exact"] == pytest.approx(2 / 3) and got["pass@1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "header, match",
    [
        ({"iclip": {"shots": -1}}, "t.jsonl:1: iclip: shots"),
        ({"iclip": {"samples": 3}}, "needs temperature > 0"),
        ({"iclip": {"samples": 2, "temperature": 1, "k": [3]}}, "every k must be in 1..samples=2"),
        ({"iclip": {"stop": "\n"}}, "stop must be a list"),
        ({"iclip": {"regex": "("}}, "does not compile"),
        ({"iclip": {"shot": 1}}, "unknown keys ['shot']"),
        ({"iclip": {"shots": 1}}, "leaves no example to score"),
    ],
)
def test_bad_iclip_headers_are_named(tmp_path, header, match):
    with pytest.raises(TaskFileError, match=re.escape(match)):
        read_task(_write(tmp_path, "t", [header, {"prompt": "a", "answer": "b"}]))
