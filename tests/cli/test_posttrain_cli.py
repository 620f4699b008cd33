"""Post-training from the command line: bad data is one line naming file:line, exit 2, nothing
written; the selection CLI refuses what it cannot read."""

import json

from tests.support.cli import run


def test_bad_post_training_data_is_one_line_with_file_and_line(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n" + '{"prompt": ""}\n')
    workdir = tmp_path / "run"
    r = run(
        "lingjax.cli.train",
        "--config=tiny",
        "--config.train.objective=c3po",
        f"--config.data.instruct={data}",
        "--config.train.routing_warmup_steps=0",
        f"--workdir={workdir}",
    )
    assert r.returncode == 2, r.stderr
    assert f"{data}:2:" in r.stderr and '"prompt" is empty' in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3 and not workdir.exists()


def test_select_checkpoint_refuses_a_missing_run(tmp_path):
    probe = tmp_path / "probe.jsonl"
    probe.write_text("")
    r = run("lingjax.cli.select_checkpoint", f"--workdir={tmp_path / 'nope'}", f"--probe={probe}")
    assert r.returncode == 2 and "is not a training workdir" in r.stderr
    r = run("lingjax.cli.select_checkpoint", f"--workdir={tmp_path}", "--band=0.5,0.3")
    assert r.returncode == 2 and "--probe" in r.stderr
