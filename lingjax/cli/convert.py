"""Convert Hugging Face Ling checkpoints to lingjax checkpoints and back, streaming.

    python -m lingjax.cli.convert --from=hf --hf_dir=Ling-lite-1.5 --out=ckpt/ling-lite
    python -m lingjax.cli.convert --to=hf --checkpoint=ckpt/ling-lite --out=export/ling-lite

--from=hf writes a params checkpoint (lingjax/checkpoint/params.py): config.json (the lingjax
Config), variables/ (an Orbax PyTree checkpoint of {"params", "buffers"}, restorable with Orbax
or `lingjax.load`, read by `lingjax.cli.generate --checkpoint=`), hf_config.json (the source
config.json), params.json and the tokenizer files with their record. --to=hf writes config.json,
model-*.safetensors shards and model.safetensors.index.json for BailingMoeForCausalLM (v1) or
BailingMoeV2ForCausalLM (v2); --checkpoint may also be a training --workdir (its newest
checkpoint that restores; the weights only, without the optimizer state). Config keys are read
as the published modeling code reads them (lingjax/checkpoint/hf/config.py); --mtp_layout says
whether num_hidden_layers counts the MTP layers. Both directions check the whole input before
writing anything; from params checkpoints peak host memory is a few blocks of --block_mb, not
the model. Remote code is never run and pickle checkpoints are refused.
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
flags.DEFINE_bool("mtp", True, "--to=hf: include the MTP layers (as model.layers.{L}..).")
flags.DEFINE_enum(
    "mtp_layout",
    None,
    ["append", "last"],
    "Where the MTP layers are counted: 'append' (num_hidden_layers = the decoder layers, the "
    "MTP layers follow, as the published modeling code builds them; the --to=hf default) or "
    "'last' (num_hidden_layers counts them too). --from=hf detects it when unset.",
)
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
        common.usage_error(
            "--to=hf needs --checkpoint=DIR (a params checkpoint or a training --workdir)"
        )
    if F.block_mb < 1:
        common.usage_error("--block_mb must be >= 1")
    from lingjax import checkpoint  # after flag checks: nothing heavy before the input is good

    block = F.block_mb * 1024 * 1024
    try:
        if src == "hf":
            cfg = checkpoint.convert_from_hf(
                F.hf_dir, F.out, dtype=F.dtype, mtp_layout=F.mtp_layout or "auto", block_bytes=block
            )
            print(
                f"wrote lingjax checkpoint {F.out}: {cfg.num_layers} layers, hidden "
                f"{cfg.hidden_size}, {cfg.moe.num_experts} experts, {cfg.param_dtype}"
            )
        else:
            from lingjax.configs import parse_size

            kw = dict(
                arch=F.arch,
                include_mtp=F.mtp,
                mtp_layout=F.mtp_layout or "append",
                max_shard_size=parse_size(F.max_shard_size),
                block_bytes=block,
            )
            if checkpoint.is_run_dir(F.checkpoint):  # a training workdir: newest good step
                cfg, variables = checkpoint.load_run(F.checkpoint)
                hf = checkpoint.save_hf(cfg, variables, F.out, aux_from=F.checkpoint, **kw)
            else:  # a params checkpoint: streamed block by block
                hf = checkpoint.convert_to_hf(F.checkpoint, F.out, **kw)
            print(f"wrote {hf['architectures'][0]} checkpoint {F.out}")
    except (
        checkpoint.HFCheckpointError,
        checkpoint.CheckpointError,
        checkpoint.ParamsCheckpointError,
        ValueError,
    ) as e:
        common.usage_error(str(e))


if __name__ == "__main__":
    common.run(main)
