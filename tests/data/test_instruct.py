"""Post-training data: chat templates render conversations with a mask on exactly the
assistant's tokens (and its end of turn where the template writes one), bad lines are refused
by file and line, whole examples are packed into rows with the loss only where it belongs, and
the batch stream resumes exactly."""

import json

import numpy as np
import pytest

from lingjax.data.chat import ChatError, chat_template, encode_conversation, encode_prompt
from lingjax.data.instruct import InstructError, InstructIterator, pack_sequences, read_instruct
from lingjax.data.tokenizer import ByteTokenizer, HFTokenizer
from tests.support.corpora import word_tokenizer

TOK = ByteTokenizer()
CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+3="},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "7+1="},
    {"role": "assistant", "content": "8"},
]


def _show(ids, keep=None):
    """Text of ids (specials as <id>), optionally only where `keep`."""
    keep = np.ones(len(ids), bool) if keep is None else keep
    pairs = zip(ids, keep, strict=True)
    return "".join(TOK.decode([i]) if i >= 3 else f"<{i}>" for i, k in pairs if k)


@pytest.mark.parametrize(
    "name, text, trained",
    [
        (
            "plain",
            "<|system|>\nBe brief.\n<|user|>\n2+3=\n<|assistant|>\n5<1>\n<|user|>\n7+1=\n"
            "<|assistant|>\n8<1>",
            "5<1>8<1>",  # every assistant turn ends with EOS, and learns to stop
        ),
        (
            "ling",
            "<role>SYSTEM</role>Be brief.<role>HUMAN</role>2+3=<role>ASSISTANT</role>5"
            "<role>HUMAN</role>7+1=<role>ASSISTANT</role>8<1>",
            "58<1>",  # Ling v1 ends the conversation, not each turn
        ),
        (
            "ling2",
            "<role>SYSTEM</role>Be brief.<|role_end|><role>HUMAN</role>2+3=<|role_end|>"
            "<role>ASSISTANT</role>5<|role_end|><role>HUMAN</role>7+1=<|role_end|>"
            "<role>ASSISTANT</role>8<|role_end|>",
            "5<|role_end|>8<|role_end|>",
        ),
    ],
)
def test_named_templates_render_and_mask_the_assistant(name, text, trained):
    template = chat_template(name, TOK)
    ids, train = encode_conversation(template, TOK, CONV)
    assert _show(ids) == text
    assert _show(ids, train) == trained
    prompt = encode_prompt(template, TOK, CONV[:2])  # continues with the assistant's answer
    assert text.startswith(_show(prompt)) and _show(prompt).endswith(("\n", "</role>"))


def test_the_tokenizers_own_template_and_a_template_file(tmp_path):
    words = word_tokenizer(tmp_path / "tokenizer.json", specials=("</s>", "<end>"))
    own = (
        "{% for m in messages %}{{ m.role }} : {{ m.content }} <end> {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "</s>", "chat_template": own})
    )
    tok = HFTokenizer(words)
    msgs = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "the dog"}]
    ids, train = encode_conversation(chat_template("auto", tok), tok, msgs)
    words = [tok._tok.id_to_token(int(i)) for i in ids]  # roles and ":" are [UNK] here
    assert words[2:5] == ["the", "cat", "<end>"] and len(words) == 10
    assert [w for w, t in zip(words, train, strict=True) if t] == ["the", "dog", "<end>"]
    assert chat_template("auto", TOK).name == "plain"  # the byte tokenizer has none
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
    ids, train = encode_conversation(chat_template(str(path), TOK), TOK, msgs[:1] + msgs[1:])
    assert TOK.decode(ids) == "[user]the cat[assistant]the dog"
    assert TOK.decode(ids[train]) == "the dog"


def test_templates_that_cannot_be_masked_or_escape_the_sandbox_are_refused(tmp_path):
    reorder = tmp_path / "reorder.jinja"  # the last message first: prefixes do not extend
    reorder.write_text("{% for m in messages|reverse %}{{ m.content }};{% endfor %}")
    with pytest.raises(ChatError, match="not a prefix"):
        encode_conversation(chat_template(str(reorder), TOK), TOK, CONV)
    evil = tmp_path / "evil.jinja"
    evil.write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatError, match="failed"):
        encode_conversation(chat_template(str(evil), TOK), TOK, CONV)
    with pytest.raises(ChatError, match="use one of"):
        chat_template("chatml", TOK)


def _write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


GOOD = {"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("{not json", "not JSON"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role 'robot'"),
        ({"messages": [{"content": "hi"}]}, 'with "role" and "content"'),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
            "empty assistant response",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x" * 80},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "more than train.seq_len=64",
        ),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "a dpo example among sft"),
        ({"text": "hello"}, "neither a conversation"),
    ],
)
def test_bad_lines_are_refused_by_file_and_line(tmp_path, bad, needle):
    path = _write(tmp_path / "d.jsonl", [GOOD, "", bad])  # blank lines are skipped
    with pytest.raises(InstructError, match=needle) as e:
        read_instruct(path, TOK, chat_template("plain", TOK), seq_len=64)
    assert f"{path}:3:" in str(e.value)


def test_pairs_and_prompts_and_kind_checks(tmp_path):
    pairs = _write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "yes", "rejected": "no"}])
    data = read_instruct(pairs, TOK, chat_template("plain", TOK), seq_len=64)
    assert data.kind == "dpo" and len(data) == 1 and len(data.seqs) == 2
    (c_ids, c_train), (r_ids, r_train) = data.seqs
    assert TOK.decode(c_ids[c_train]) == "yes" and TOK.decode(r_ids[r_train]) == "no"
    with pytest.raises(InstructError, match="needs sft data"):
        read_instruct(pairs, TOK, chat_template("plain", TOK), seq_len=64, kind="sft")
    bad = _write(tmp_path / "q.jsonl", [{"prompt": "q", "chosen": "yes"}])
    with pytest.raises(InstructError, match='needs "rejected"'):
        read_instruct(bad, TOK, chat_template("plain", TOK), seq_len=64)
    prompts = _write(tmp_path / "r.jsonl", [{"prompt": "2+2=", "answer": "4"}])
    data = read_instruct(prompts, TOK, chat_template("plain", TOK), seq_len=64)
    assert data.kind == "prompts" and data.records[0]["answer"] == "4"
    with pytest.raises(InstructError, match="prompt with max_new_tokens"):
        read_instruct(prompts, TOK, chat_template("plain", TOK), seq_len=64, max_new_tokens=60)
    with pytest.raises(InstructError, match=r"no \.jsonl file"):
        read_instruct(str(tmp_path / "none.jsonl"), TOK, chat_template("plain", TOK), seq_len=64)


def test_packing_trains_exactly_the_assistant_tokens():
    template = chat_template("plain", TOK)
    seqs = [encode_conversation(template, TOK, CONV), encode_conversation(template, TOK, CONV[1:3])]
    batch, placed = pack_sequences(seqs, rows=2, seq_len=96)
    (ids0, _), (ids1, _) = seqs
    assert len(ids0) + len(ids1) > 96 and placed == [(0, 1), (1, 1)]  # the 2nd starts a row
    for row, (ids, train) in enumerate(seqs):
        n = len(ids)
        np.testing.assert_array_equal(batch["tokens"][row, :n], ids)
        np.testing.assert_array_equal(batch["positions"][row, :n], np.arange(n))
        want = np.where(train[1:], ids[1:], -1)  # predict token t+1 where it is trained
        np.testing.assert_array_equal(batch["labels"][row, : n - 1], want)
        assert (batch["labels"][row, n - 1 :] == -1).all() and (
            batch["segment_ids"][row, n:] == 0
        ).all()
    targets = batch["labels"][batch["labels"] >= 0]
    assert _show(targets) == "5<1>8<1>5<1>"


def test_batches_pack_whole_examples_and_resume_exactly(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        a = "x" * int(rng.integers(1, 30))
        lines.append(
            {"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": str(i)}]}
        )
    data = read_instruct(
        _write(tmp_path / "s.jsonl", lines), TOK, chat_template("plain", TOK), seq_len=64
    )
    it = InstructIterator(data, seq_len=64, rows=3, seed=1)
    seen = []
    for _ in range(20):
        b = next(it)
        for r in range(3):
            for s in set(b["segment_ids"][r]) - {0}:
                seq = b["tokens"][r][b["segment_ids"][r] == s]
                assert any(np.array_equal(seq, ids) for ids, _ in data.seqs)  # never split
                seen.append(seq.tobytes())
    assert len(set(seen)) == 40 and len(seen) > 40  # every example within ~1 epoch, then again
    state = it.get_state()
    want = [next(it) for _ in range(3)]
    again = InstructIterator(data, seq_len=64, rows=3, seed=1)
    again.set_state(state)
    for b, w in zip([next(again) for _ in range(3)], want, strict=True):
        for k in b:
            np.testing.assert_array_equal(b[k], w[k])
    other = read_instruct(
        _write(tmp_path / "o.jsonl", lines[:-1]), TOK, chat_template("plain", TOK), seq_len=64
    )
    with pytest.raises(InstructError, match="other post-training examples"):
        InstructIterator(other, seq_len=64, rows=3).set_state(state)


def test_dpo_batches_keep_a_pair_together():
    template = chat_template("plain", TOK)
    lines = [{"prompt": f"q{i}", "chosen": "y" * (i + 1), "rejected": "n"} for i in range(5)]
    from lingjax.data.instruct import InstructData

    data = InstructData(kind="dpo", where=[f"f:{i}" for i in range(5)])
    for line in lines:
        for key in ("chosen", "rejected"):
            msgs = [
                {"role": "user", "content": line["prompt"]},
                {"role": "assistant", "content": line[key]},
            ]
            data.seqs.append(encode_conversation(template, TOK, msgs))
    it = InstructIterator(data, seq_len=64, rows=2, seed=0)
    b = next(it)
    slots = [k for k in range(2) if b["pair_index"][k] >= 0]
    assert slots == [0, 1]  # P = rows = 2 pair slots, both used
    for k in slots:
        i = int(b["pair_index"][k])
        for side in (0, 1):
            on = (b["pair"] == k) & (b["side"] == side)
            np.testing.assert_array_equal(b["tokens"][on], data.seqs[2 * i + side][0])
