"""Generate text (or token ids) from a lingjax checkpoint with a KV cache.

    python -m lingjax.cli.generate --checkpoint=ckpt/ling-lite --prompt="def fib(n):" \
        --max_new_tokens=64 --temperature=0.7 --top_p=0.9
    python -m lingjax.cli.generate --checkpoint=ckpt --prompt_ids=5,6,7 --prompt_ids=8,9

--checkpoint is a params checkpoint (config.json + variables/, e.g. written by
`lingjax.cli.convert --from=hf` or a merge) or a training workdir (its newest checkpoint that
restores, or --step). Text prompts are encoded with the tokenizer the checkpoint records (the
one it was trained with); --tokenizer ("byte" or a tokenizer.json) is needed only when it
records none, and is refused when it differs from the recorded one. Several
--prompt/--prompt_ids run as one batch.
"""

from __future__ import annotations

import json

from absl import flags, logging

from lingjax.cli import common

flags.DEFINE_string(
    "checkpoint", None, "lingjax checkpoint directory (config.json + variables/) or a --workdir."
)
flags.DEFINE_multi_string("prompt", [], "A text prompt (repeat for a batch).")
flags.DEFINE_multi_string("prompt_ids", [], "A prompt as comma-separated token ids.")
flags.DEFINE_string(
    "tokenizer", "", "byte or a tokenizer.json path; default: the one the checkpoint records."
)
flags.DEFINE_integer("step", None, "A training workdir's checkpoint step (default: newest).")
flags.DEFINE_integer("max_new_tokens", 32, "Tokens to generate per prompt.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples from softmax(logits / T).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (with temperature > 0).")
flags.DEFINE_integer("eos_id", None, "Stop token id (default: the model config's; -1 = none).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_bool("json", False, "Print one JSON object per prompt.")


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        common.usage_error(f"--prompt_ids={text!r}: expected comma-separated integers")
    if not ids:
        common.usage_error("--prompt_ids is empty")
    return ids


def main(argv: list[str]) -> None:
    del argv
    # Orbax logs every restore at INFO, and read-only managers at WARNING.
    logging.set_verbosity(logging.ERROR)
    F = common.FLAGS
    if not F.checkpoint:
        common.usage_error(
            "--checkpoint=DIR is required (a params checkpoint or a training --workdir)"
        )
    if not F.prompt and not F.prompt_ids:
        common.usage_error("pass at least one --prompt=TEXT or --prompt_ids=1,2,3")
    if F.max_new_tokens < 1 or F.temperature < 0 or not 0 < F.top_p <= 1:
        common.usage_error("need --max_new_tokens >= 1, --temperature >= 0, 0 < --top_p <= 1")
    ids = [_parse_ids(p) for p in F.prompt_ids]
    from lingjax.checkpoint import CheckpointError, ParamsCheckpointError, load
    from lingjax.data.tokenizer import TokenizerError, recorded_tokenizer
    from lingjax.evaluate import generate

    tok = None
    if F.prompt:
        try:
            tok = recorded_tokenizer(F.checkpoint, F.tokenizer)
        except TokenizerError as e:
            common.usage_error(str(e))
        ids = [tok.encode(p).tolist() for p in F.prompt] + ids
    try:
        cfg, variables = load(F.checkpoint, F.step)
    except (CheckpointError, ParamsCheckpointError) as e:
        common.usage_error(str(e))
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        common.usage_error(
            f"the tokenizer has {tok.vocab_size} ids but the model's vocab_size is "
            f"{cfg.vocab_size}; pass the --tokenizer the model was trained with"
        )
    try:
        out = generate(
            cfg,
            variables,
            ids,
            max_new_tokens=F.max_new_tokens,
            temperature=F.temperature,
            top_p=F.top_p,
            eos_id=F.eos_id,
            seed=F.seed,
        )
    except ValueError as e:
        common.usage_error(str(e))
    prompts = list(F.prompt) + list(F.prompt_ids)
    for i, (prompt, new) in enumerate(zip(prompts, out.as_lists(), strict=True)):
        text = tok.decode(new) if i < len(F.prompt) else None
        if F.json:
            print(json.dumps({"prompt": prompt, "ids": new, "text": text}))
        else:
            print(text if text is not None else ",".join(map(str, new)))


if __name__ == "__main__":
    common.run(main)
