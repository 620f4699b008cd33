"""lm-evaluation-harness on a lingjax checkpoint: each request type against a direct forward or
generation, lm-eval's own evaluator on a local YAML task (no hub), and the CLI."""

import json
import math

import jax
import numpy as np
import pytest
from lm_eval.api.instance import Instance

import lingjax
from lingjax import configs
from lingjax.checkpoint import save_params
from lingjax.data import ByteTokenizer
from lingjax.data.tokenizer import save_tokenizer
from lingjax.evaluate.harness import LingjaxLM
from tests.support.cli import cpu_env, finish, run, spawn
from tests.support.hf_synth import random_variables

SEQ = 48  # scoring rows: not a multiple of anything, and shorter than the long requests


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = configs.get("tiny", **{"model.num_layers": 2, "model.first_k_dense": 1}).model
    path = str(tmp_path_factory.mktemp("lm") / "ckpt")
    save_params(path, cfg, random_variables(cfg, seed=1, std=0.2))
    save_tokenizer(ByteTokenizer(), path)
    return path


@pytest.fixture(scope="module")
def lm(checkpoint):
    return LingjaxLM(checkpoint=checkpoint, seq_len=SEQ, batch_size=3, max_gen_toks=6)


def _req(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def _logprobs(lm, ids):
    """log p(ids[i] | ids[:i]) for i >= 1, from one unpacked forward."""
    logits = lingjax.forward(lm.model_cfg, lm.variables, np.asarray([ids]))[0]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return np.asarray([logp[i - 1, ids[i]] for i in range(1, len(ids))]), np.asarray(
        [int(np.argmax(logits[i - 1])) == ids[i] for i in range(1, len(ids))]
    )


def test_loglikelihood_is_the_continuations_log_probability(lm):
    tok = ByteTokenizer()
    pairs = [("def f(x): ", "return x"), ("", "import os"), ("a" * 90, "bc"), ("x = ", "1")]
    got = lm.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs])
    for (ctx, cont), (lp, greedy) in zip(pairs, got, strict=True):
        # lm-eval's convention: the context's trailing space belongs to the continuation.
        if ctx.endswith(" "):
            ctx, cont = ctx[:-1], " " + cont
        ids = [tok.bos_id, *tok.encode(ctx), *tok.encode(cont)]
        n = len(tok.encode(cont))
        ids = ids[-SEQ - 1 :]  # a context longer than a row is cut from the left
        lps, hits = _logprobs(lm, ids)
        assert lp == pytest.approx(float(lps[-n:].sum()), rel=1e-4, abs=1e-3)
        assert greedy == bool(hits[-n:].all())


def test_rolling_loglikelihood_sums_disjoint_windows(lm):
    tok = ByteTokenizer()
    texts = ["short text", "a longer text that spans more than one window of the rows " * 2]
    got = lm.loglikelihood_rolling([_req("loglikelihood_rolling", t) for t in texts])
    for text, lp in zip(texts, got, strict=True):
        ids = tok.encode(text)
        prev, want = [tok.bos_id, *ids], 0.0
        for lo in range(0, len(ids), SEQ - 1):  # each window after the one token before it
            window = [prev[lo], *ids[lo : lo + SEQ - 1]]
            want += float(_logprobs(lm, window)[0].sum())
        assert lp == pytest.approx(want, rel=1e-4)
    assert len(tok.encode(texts[1])) > 2 * SEQ, "the long text takes three windows"


def test_generate_until_is_greedy_generation_cut_at_the_stop_string(lm):
    tok = ByteTokenizer()
    prompts = ["def ", "class A:", "import", "x = 1\n"]
    reqs = [_req("generate_until", p, {"until": ["\n\n"], "do_sample": False}) for p in prompts]
    got = lm.generate_until(reqs)
    ids = [[tok.bos_id, *tok.encode(p)] for p in prompts]
    want = lingjax.generate(lm.model_cfg, lm.variables, ids, max_new_tokens=6, eos_id=tok.eos_id)
    for text, out in zip(got, want.as_lists(), strict=True):
        full = tok.decode(out)
        assert text == full.split("\n\n")[0]
    # A stop string that occurs: the text ends before it (the tiny model's own first byte).
    first = got[0][:1]
    if first:
        assert lm.generate_until([_req("generate_until", "def ", {"until": [first]})]) == [""]


ROWS = [
    {"q": "1 + 1 =", "choices": [" 2", " 3", " 11"], "label": 0},
    {"q": "def f", "choices": ["(x):", "[x]", "{x}"], "label": 0},
    {"q": "import", "choices": [" os", " 7", " ="], "label": 0},
    {"q": "class A", "choices": [":", "(", " =", "."], "label": 1},
    {"q": "x", "choices": [" = 1", " += 2"], "label": 0},
]


def _write_task(tmp_path) -> None:
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "mc.yaml").write_text(
        "task: lingjax_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )


def test_lm_eval_runs_a_local_task(checkpoint, tmp_path):
    import lm_eval

    rows = ROWS
    _write_task(tmp_path)
    out = lm_eval.simple_evaluate(
        model="lingjax",
        model_args=f"checkpoint={checkpoint},seq_len={SEQ}",
        tasks=["lingjax_mc"],
        task_manager=lm_eval.tasks.TaskManager(include_path=str(tmp_path)),
    )
    acc = out["results"]["lingjax_mc"]["acc,none"]
    # The accuracy lm-eval reports is the argmax of our log-likelihoods.
    lm = LingjaxLM(checkpoint=checkpoint, seq_len=SEQ)
    right = 0
    for r in rows:
        scores = lm.loglikelihood([_req("loglikelihood", r["q"], " " + c) for c in r["choices"]])
        right += int(np.argmax([s for s, _ in scores])) == r["label"]
    assert math.isclose(acc, right / len(rows))

    r = run(
        "lingjax.cli.lm_eval",
        "--model_args",
        f"checkpoint={checkpoint},seq_len={SEQ}",
        "--tasks",
        "lingjax_mc",
        "--include_path",
        str(tmp_path),
        "--output_path",
        str(tmp_path / "out"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    written = list((tmp_path / "out").rglob("results*.json"))
    assert written and "lingjax_mc" in json.loads(written[0].read_text())["results"]


def test_the_cli_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys, monkeypatch):
    from lingjax.cli.lm_eval import main

    monkeypatch.setattr("sys.argv", ["lm-eval"])  # main() restores nothing: keep pytest's
    (tmp_path / "t.yaml").write_text("task: t\ndataset_path: json\noutput_type: loglikelihood\n")
    with pytest.raises(SystemExit) as e:
        main(
            ["--model_args", "checkpoint=/nowhere", "--tasks", "t", "--include_path", str(tmp_path)]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: model_args checkpoint=/nowhere: no such directory", err


def test_bad_model_args_are_refused(checkpoint):
    for kwargs, needle in [
        ({}, "needs checkpoint=DIR"),
        ({"checkpoint": checkpoint, "seq_len": 10**6}, "exceeds the model's"),
        ({"checkpoint": checkpoint, "merge_last": 3}, "needs a training workdir"),
        ({"checkpoint": checkpoint, "seq_len": "many"}, "must be an integer"),
    ]:
        with pytest.raises(ValueError, match=needle):
            LingjaxLM(**kwargs)


def test_two_processes_follow_process_0(checkpoint, tmp_path):
    """Process 0 drives lm-eval over all 4 devices of two processes; the logged
    log-likelihoods are one process's."""
    import sys

    _write_task(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "lingjax.cli.lm_eval",
        "--model_args",
        f"checkpoint={checkpoint},seq_len={SEQ}",
        "--tasks",
        "lingjax_mc",
        "--include_path",
        str(tmp_path),
        "--batch_size",
        "3",  # rounded up to 4 rows: one per device
        "--log_samples",
        "--output_path",
        str(tmp_path / "out"),
    ]
    finish(spawn(cmd, cpu_env(devices=2), 2))
    files = (tmp_path / "out").rglob("samples_*.jsonl")
    samples = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    assert len(samples) == len(ROWS)
    lm = LingjaxLM(checkpoint=checkpoint, seq_len=SEQ)
    for sample in samples:
        doc = ROWS[sample["doc_id"]]
        want = lm.loglikelihood([_req("loglikelihood", doc["q"], " " + c) for c in doc["choices"]])
        got = [float(r[0][0]) for r in sample["resps"]]  # lm-eval logs them as text
        np.testing.assert_allclose(got, [w[0] for w in want], rtol=1e-5)
