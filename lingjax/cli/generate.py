"""Generate text (or token ids) from a lingjax checkpoint with a KV cache.

    python -m lingjax.cli.generate --checkpoint=ckpt/ling-lite --prompt="def fib(n):" \
        --max_new_tokens=64 --temperature=0.7 --top_p=0.9
    python -m lingjax.cli.generate --checkpoint=ckpt --prompt_ids=5,6,7 --prompt_ids=8,9

--checkpoint is a lingjax checkpoint directory (config.json + variables/, e.g. written by
`lingjax.cli.convert --from=hf`) or a training workdir (its newest checkpoint that restores).
Text prompts use --tokenizer: "byte", the path of a tokenizer.json, or by default the
checkpoint's own tokenizer.json (else the byte tokenizer). Several --prompt/--prompt_ids run as
one batch.
"""

from __future__ import annotations

import json
import os

from absl import flags, logging

from lingjax.cli import common

flags.DEFINE_string(
    "checkpoint", None, "lingjax checkpoint directory (config.json + variables/) or a --workdir."
)
flags.DEFINE_multi_string("prompt", [], "A text prompt (repeat for a batch).")
flags.DEFINE_multi_string("prompt_ids", [], "A prompt as comma-separated token ids.")
flags.DEFINE_string("tokenizer", "", "byte, a tokenizer.json path, or '' = the checkpoint's.")
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
        common.usage_error("--checkpoint=DIR is required (a lingjax checkpoint directory)")
    if not F.prompt and not F.prompt_ids:
        common.usage_error("pass at least one --prompt=TEXT or --prompt_ids=1,2,3")
    if F.max_new_tokens < 1 or F.temperature < 0 or not 0 < F.top_p <= 1:
        common.usage_error("need --max_new_tokens >= 1, --temperature >= 0, 0 < --top_p <= 1")
    ids = [_parse_ids(p) for p in F.prompt_ids]
    tok = None
    if F.prompt:
        from lingjax.data.tokenizer import TokenizerError, load_tokenizer

        spec = F.tokenizer
        if not spec:
            own = os.path.join(F.checkpoint, "tokenizer.json")
            spec = own if os.path.isfile(own) else "byte"
        try:
            tok = load_tokenizer(spec)
        except TokenizerError as e:
            common.usage_error(str(e))
        ids = [tok.encode(p).tolist() for p in F.prompt] + ids
    from lingjax.checkpoint import CheckpointError, load_checkpoint
    from lingjax.evaluate import generate
    from lingjax.train import is_run_dir, load_run

    try:
        if is_run_dir(F.checkpoint):  # a training workdir: its newest good checkpoint
            cfg, variables = load_run(F.checkpoint)
        else:
            cfg, variables = load_checkpoint(F.checkpoint)
    except (FileNotFoundError, CheckpointError) as e:
        common.usage_error(str(e))
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
