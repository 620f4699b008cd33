"""Convert Hugging Face Ling checkpoints to lingjax checkpoints and back, streaming.

    python -m lingjax.cli.convert --from=hf --hf_dir=Ling-lite-1.5 --out=ckpt/ling-lite
    python -m lingjax.cli.convert --to=hf --checkpoint=ckpt/ling-lite --out=export/ling-lite

--from=hf writes a lingjax checkpoint directory: config.json (the lingjax Config), variables/
(an Orbax PyTree checkpoint of {"params", "buffers"}, restorable with Orbax or
`lingjax.checkpoint.load_checkpoint`, read by `lingjax.cli.generate --checkpoint=`),
hf_config.json (the source config.json) and the tokenizer files. --to=hf writes config.json,
model-*.safetensors shards and model.safetensors.index.json for BailingMoeForCausalLM (v1) or
BailingMoeV2ForCausalLM (v2); --checkpoint may also be a training --workdir (its newest
checkpoint that restores, read into memory whole). Both check the whole input before writing
anything; from converted checkpoints peak host memory is a few blocks of --block_mb, not the
model. Remote code is never run and pickle
checkpoints are refused.
"""

from __future__ import annotations

from absl import flags

from lingjax.cli import common

flags.DEFINE_enum("from", None, ["hf"], "Convert from this format into a lingjax checkpoint.")
flags.DEFINE_enum("to", None, ["hf"], "Convert a lingjax checkpoint into this format.")
flags.DEFINE_string("hf_dir", None, "--from=hf: the Hugging Face model directory.")
flags.DEFINE_string(
    "checkpoint", None, "--to=hf: a lingjax checkpoint directory or a training --workdir."
)
flags.DEFINE_string("out", None, "Output directory (must not exist, or be empty).")
flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16"], "--from=hf: parameter dtype (default: as stored)."
)
flags.DEFINE_enum("arch", "auto", ["auto", "v1", "v2"], "--to=hf: BailingMoe v1 or v2.")
flags.DEFINE_bool("mtp", True, "--to=hf: include the MTP layers (as model.layers.{L}).")
flags.DEFINE_string("max_shard_size", "5GB", "--to=hf: largest safetensors shard.")
flags.DEFINE_integer("block_mb", 64, "Bytes moved per block, in MiB (bounds host memory).")


def main(argv: list[str]) -> None:
    del argv
    F = common.FLAGS
    src, dst = F["from"].value, F.to
    if (src is None) == (dst is None):
        common.usage_error("pass exactly one of --from=hf or --to=hf")
    if not F.out:
        common.usage_error("--out is required (a new directory)")
    if src == "hf" and not F.hf_dir:
        common.usage_error("--from=hf needs --hf_dir=DIR (a Hugging Face model directory)")
    if dst == "hf" and not F.checkpoint:
        common.usage_error("--to=hf needs --checkpoint=DIR (a lingjax checkpoint directory)")
    if F.block_mb < 1:
        common.usage_error("--block_mb must be >= 1")
    from lingjax import checkpoint  # after flag checks: nothing heavy before the input is good

    block = F.block_mb * 1024 * 1024
    try:
        if src == "hf":
            cfg = checkpoint.convert_from_hf(F.hf_dir, F.out, dtype=F.dtype, block_bytes=block)
            print(
                f"wrote lingjax checkpoint {F.out}: {cfg.num_layers} layers, hidden "
                f"{cfg.hidden_size}, {cfg.moe.num_experts} experts, {cfg.param_dtype}"
            )
        else:
            from lingjax.train import is_run_dir, load_run

            kw = dict(
                arch=F.arch,
                include_mtp=F.mtp,
                max_shard_size=checkpoint.parse_size(F.max_shard_size),
                block_bytes=block,
            )
            if is_run_dir(F.checkpoint):  # a training workdir: its newest good checkpoint
                hf = checkpoint.save_hf(*load_run(F.checkpoint), F.out, **kw)
            else:  # a converted checkpoint: streamed block by block
                hf = checkpoint.convert_to_hf(F.checkpoint, F.out, **kw)
            print(f"wrote {hf['architectures'][0]} checkpoint {F.out}")
    except (
        checkpoint.HFCheckpointError,
        checkpoint.CheckpointError,
        FileNotFoundError,
        ValueError,
    ) as e:
        common.usage_error(str(e))


if __name__ == "__main__":
    common.run(main)
