"""The data hooks of the training loop: realised mixture proportions and val_loss on the
held-out split land in metrics.jsonl; the Evaluator's numbers match a direct computation."""

import json
import math
import pathlib
import sysconfig
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from lingjax import configs
from lingjax.data import MODEL_INPUTS, ByteTokenizer, make_eval_datasets, write_corpus
from lingjax.train import train
from lingjax.train.evaluation import Evaluator


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    """Two byte corpora of standard-library modules (real text, so the loss can fall)."""
    files = sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:48]
    tok, root = ByteTokenizer(), tmp_path_factory.mktemp("two")
    for name, part in (("a", files[::2]), ("b", files[1::2])):
        write_corpus(
            (tok.encode(f.read_text(errors="replace")[:6000]) for f in part),
            root / name,
            tokenizer=tok.kind,
            tokenizer_hash=tok.sha256,
            vocab_size=tok.vocab_size,
            domain=name,
        )
    return {name: str(root / name) for name in ("a", "b")}


def _cfg(two_corpora, **overrides):
    return configs.get(
        "tiny",
        **{
            "model.num_layers": 1,
            "model.first_k_dense": 1,  # a dense layer compiles fastest; the data is what's tested
            "mesh.data": 1,  # one device: the hooks are what is tested, not the sharding
            "train.steps": 6,
            "train.log_every": 6,
            "train.batch_size": 4,
            "train.seq_len": 32,
            "data.mixture": f"a={two_corpora['a']}:0.25,b={two_corpora['b']}:0.75",
            "data.tokenizer": "byte",
            "data.eval_fraction": 0.25,
            "eval.every": 3,
            "eval.batches": 2,
            **overrides,
        },
    )


def test_metrics_have_val_loss_and_realised_mixture(two_corpora, tmp_path):
    cfg = _cfg(two_corpora)
    train(cfg, str(tmp_path))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6], "validation steps are logged"
    for r in rows:
        assert r["val_loss"] == pytest.approx(0.25 * r["val_loss/a"] + 0.75 * r["val_loss/b"])
        assert math.isfinite(r["val_loss"]) and r["val_tokens"] > 0
        # 12 rows per window, split 3:9 by the schedule (padding aside).
        assert r["mixture/a"] + r["mixture/b"] == pytest.approx(1.0)
        assert abs(r["mixture/a"] - 0.25) < 0.1, r
    assert rows[1]["val_loss"] < rows[0]["val_loss"], "the held-out loss falls as it trains"


def test_evaluator_aggregates_per_corpus_and_pads_short_splits(two_corpora):
    # A stand-in step whose "loss" of a target token is its label mod 7: the aggregation is
    # checked against the batches themselves, without compiling a model.
    def fake_step(params, buffers, batch):
        mask = batch["labels"] >= 0
        return (batch["labels"] % 7 * mask).sum().astype(np.float32), mask.sum()

    cfg = _cfg(two_corpora, **{"eval.batches": 300})  # more than the splits hold

    def put_batch(batch):
        assert set(batch) == set(MODEL_INPUTS), "only the model's inputs go to the device"
        return {k: jax.device_put(v) for k, v in batch.items()}

    evaluator = Evaluator(cfg, put_batch, eval_step=jax.jit(fake_step))
    got = evaluator(SimpleNamespace(params={}, buffers={}))
    expected = {}
    for name, _, ds in make_eval_datasets(cfg.data, seq_len=32, batch_size=4, vocab_size=512):
        labels = np.concatenate([b["labels"] for b in ds])  # the whole split, once
        assert len(labels) < 4 * 300, "the split ends before eval_batches: padding is exercised"
        valid = labels[labels >= 0]
        expected[name] = (float((valid % 7).sum()) / len(valid), len(valid))
    for name, (loss, _) in expected.items():
        assert got[f"val_loss/{name}"] == pytest.approx(loss, rel=1e-6)
    assert got["val_tokens"] == sum(n for _, n in expected.values())
    assert got["val_loss"] == pytest.approx(0.25 * expected["a"][0] + 0.75 * expected["b"][0])
    assert evaluator(SimpleNamespace(params={}, buffers={})) == got, "the same tokens each time"
    assert [evaluator.due(s, last=s == 7) for s in (0, 1, 3, 6, 7)] == [
        False,
        False,
        True,
        True,
        True,
    ]
