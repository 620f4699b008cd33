"""The convert and generate CLIs end to end: HF -> lingjax checkpoint -> HF (bit-exact) ->
generation from the checkpoint; bad input exits 2 with one line and writes nothing."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.support import hf_synth
from tests.support.corpora import word_tokenizer


def run(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=600
    )


def _tensors(directory) -> dict:
    out = {}
    for f in os.listdir(directory):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(directory, f)))
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("hf"))
    config = hf_synth.v2_config(num_hidden_layers=2, vocab_size=300)
    tensors = hf_synth.write_hf_checkpoint(d, config, dtype=hf_synth.BF16)
    return d, tensors


def test_convert_round_trip_then_generate(hf_dir, tmp_path):
    src, tensors = hf_dir
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    r = run("lingjax.cli.convert", "--from=hf", f"--hf_dir={src}", f"--out={ckpt}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote lingjax checkpoint" in r.stdout and "bfloat16" in r.stdout
    assert (ckpt / "config.json").is_file() and (ckpt / "variables" / "_METADATA").is_file()
    r = run(
        "lingjax.cli.convert",
        "--to=hf",
        f"--checkpoint={ckpt}",
        f"--out={back}",
        "--max_shard_size=200KB",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "BailingMoeV2ForCausalLM" in r.stdout
    out = _tensors(back)
    assert sorted(out) == sorted(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(out[k].view(np.uint8), v.view(np.uint8), err_msg=k)
    with open(back / "model.safetensors.index.json") as f:
        assert len(set(json.load(f)["weight_map"].values())) > 1

    # The HF directory had no tokenizer.json, so the checkpoint records none: a text prompt
    # needs --tokenizer (never a silent byte-tokenizer fallback); token ids do not.
    r = run("lingjax.cli.generate", f"--checkpoint={ckpt}", "--prompt=hi")
    assert r.returncode == 2 and "records no tokenizer" in r.stderr, r.stderr[-2000:]
    r = run(
        "lingjax.cli.generate",
        f"--checkpoint={ckpt}",
        "--prompt_ids=5,6,7",
        "--prompt_ids=8",
        "--prompt=hi",
        "--tokenizer=byte",
        "--max_new_tokens=3",
        "--eos_id=-1",
        "--json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [x["prompt"] for x in lines] == ["hi", "5,6,7", "8"]
    assert all(len(x["ids"]) == 3 for x in lines) and isinstance(lines[0]["text"], str)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--from=hf", "--to=hf"], "exactly one"),
        (["--from=hf", "--out=OUT"], "--hf_dir"),
        (["--to=hf", "--out=OUT"], "--checkpoint"),
        (["--from=hf", "--hf_dir=HF"], "--out"),
        (["--from=hf", "--hf_dir=HF", "--out=OUT", "--dtype=float16"], "dtype"),
        (["--from=hf", "--hf_dir=BROKEN", "--out=OUT"], "missing"),
        (["--to=hf", "--checkpoint=HF", "--out=OUT"], "Hugging Face checkpoint"),
        (["--to=hf", "--checkpoint=BROKEN/nope", "--out=OUT"], "not found"),
        (["--from=hf", "--hf_dir=BADJSON", "--out=OUT"], "config.json is not valid JSON (line 2"),
    ],
)
def test_convert_bad_input_exits_2_and_writes_nothing(hf_dir, tmp_path, args, needle):
    src, _ = hf_dir
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in os.listdir(src):
        if not f.startswith("model-00002"):
            os.link(os.path.join(src, f), broken / f)
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "config.json").write_text('{"architectures":\n  [oops]}')
    out = tmp_path / "out"
    args = [
        a.replace("OUT", str(out))
        .replace("BROKEN", str(broken))
        .replace("BADJSON", str(bad_json))
        .replace("HF", src)
        for a in args
    ]
    r = run("lingjax.cli.convert", *args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_a_converted_checkpoint_keeps_the_hf_tokenizer_and_generation_uses_it(hf_dir, tmp_path):
    src, _ = hf_dir
    with_tok = tmp_path / "with_tokenizer"
    with_tok.mkdir()
    for f in os.listdir(src):
        os.link(os.path.join(src, f), with_tok / f)
    word_tokenizer(with_tok / "tokenizer.json")
    ckpt = tmp_path / "ckpt"
    r = run("lingjax.cli.convert", "--from=hf", f"--hf_dir={with_tok}", f"--out={ckpt}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((ckpt / "tokenizer_record.json").read_text())["kind"] == "hf"
    r = run("lingjax.cli.generate", f"--checkpoint={ckpt}", "--prompt=def x", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("lingjax.cli.generate", f"--checkpoint={ckpt}", "--prompt=x", "--tokenizer=byte")
    assert r.returncode == 2 and "was made with a tokenizer.json" in r.stderr, r.stderr
