"""Build a tokenised corpus (ArrayRecord shards + manifest.json) from text files.

    python -m lingjax.cli.build_corpus --input='data/web/*.jsonl.gz' --tokenizer=tokenizer.json \
        --domain=web --output=corpora/web
    python -m lingjax.cli.build_corpus --input='notes/**/*.txt' --tokenizer=byte --domain=notes \
        --output=corpora/notes

A run then reads it with --config.data.corpus=corpora/web (or names it in a mixture:
--config.data.corpora=web=corpora/web,code=corpora/code --config.data.mixture=web:0.7,code:0.3).
The output appears only when complete. Bad input exits with status 2 and one line naming the file
(and line) and the fix.
"""

from __future__ import annotations

import sys

from absl import flags

from lingjax.cli import common

flags.DEFINE_string(
    "input", None, "Input files: comma-separated globs ('**' recurses); .gz for txt/jsonl."
)
flags.DEFINE_enum(
    "format", None, ["txt", "jsonl", "parquet"], "Input format; default: from the extensions."
)
flags.DEFINE_string("text_field", "text", "jsonl field / parquet column holding the text.")
flags.DEFINE_enum(
    "txt_unit", "file", ["file", "line"], "A .txt document is a whole file, or each line."
)
flags.DEFINE_string("tokenizer", "byte", "'byte' or the path of a Hugging Face tokenizer.json.")
flags.DEFINE_string(
    "eos_token", "", "End-of-document token of a tokenizer.json (when it cannot be told)."
)
flags.DEFINE_string("domain", None, "Domain tag recorded in the manifest (code, web, math...).")
flags.DEFINE_string("output", None, "Corpus directory to create; must not exist.")
flags.DEFINE_enum(
    "bad_lines", "fail", ["fail", "skip"], "Bad records: fail, or skip and count them."
)
flags.DEFINE_integer("docs_per_shard", 4096, "Documents per ArrayRecord shard.", lower_bound=1)
flags.DEFINE_bool("progress", True, "Print a progress line to stderr.")


def main(argv: list[str]) -> None:
    del argv
    F = common.FLAGS
    for name in ("input", "domain", "output"):
        if not getattr(F, name):
            common.usage_error(f"--{name} is required (python -m lingjax.cli.build_corpus --help)")
    # Imported after the flags are checked; the data modules pull in array_record and numpy.
    from lingjax.data.build import build_corpus
    from lingjax.data.corpus import CorpusError
    from lingjax.data.readers import InputError, find_inputs, infer_format
    from lingjax.data.tokenizer import TokenizerError, load_tokenizer

    try:
        files = find_inputs(F.input)
        fmt = F.format or infer_format(files)
        tokenizer = load_tokenizer(F.tokenizer, F.eos_token)
        manifest = build_corpus(
            files,
            fmt=fmt,
            tokenizer=tokenizer,
            domain=F.domain,
            output=F.output,
            text_field=F.text_field,
            txt_unit=F.txt_unit,
            bad_lines=F.bad_lines,
            docs_per_shard=F.docs_per_shard,
            progress=sys.stderr if F.progress else None,
            input_spec=F.input,
        )
    except (InputError, CorpusError, TokenizerError) as e:
        common.usage_error(str(e))
        return
    skipped = manifest.metadata.get("records_skipped") or 0
    print(
        f"wrote {F.output}: {manifest.num_documents:,} documents, {manifest.num_tokens:,} tokens "
        f"(EOS included) in {len(manifest.shards)} shards; tokenizer {manifest.tokenizer} "
        f"{manifest.tokenizer_hash[:12]}, vocab_size {manifest.vocab_size}, eos_id "
        f"{manifest.eos_id}" + (f"; {skipped:,} bad records skipped" if skipped else "")
    )


if __name__ == "__main__":
    common.run(main)
