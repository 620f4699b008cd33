"""End to end: 30 training steps of `tiny-v2` (Ling 2.0 style: expert bias, MTP) on real text
make the loss fall, with all logged metrics present and finite. `tiny` (Ling v1) trains end to
end in most tests of the loop; its loss falling over 20 steps is asserted in
tests/parallel/test_multihost.py."""

import json
import math

import pytest

from lingjax import configs
from lingjax.train import train


@pytest.mark.parametrize("name", ["tiny-v2"])
def test_thirty_steps_loss_falls(tmp_path, corpus_dir, name):
    cfg = configs.get(
        name,
        **{
            "train.steps": 30,
            "train.log_every": 5,
            "train.batch_size": 8,
            "train.seq_len": 128,
            "data.corpus": corpus_dir,
            "mesh.data": 1,  # the loop end to end; meshes are tested in tests/parallel
        },
    )
    summary = train(cfg, str(tmp_path))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < 0.75 * first, (first, last)
    assert summary["loss"] == last
    for r in rows:
        for key in ("loss", "ce_loss", "grad_norm", "lr", "max_load_violation", "z_loss"):
            assert math.isfinite(r[key]), (key, r)
        assert r["dropped"] == 0  # dropless
        assert len(r["load_violation"]) == cfg.model.num_moe_layers
    if cfg.model.num_mtp_layers:
        assert rows[-1]["mtp_loss"] < rows[0]["mtp_loss"]
