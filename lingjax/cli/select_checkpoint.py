"""Entropy-based checkpoint selection (Ring-lite): the SFT checkpoint to start RL from.

    python -m lingjax.cli.select_checkpoint --workdir=runs/sft --probe=probe.jsonl \
        [--band=0.3,0.5] [--chat_template=auto] [--out=runs/sft/entropy.json] [--plot=e.png]

Prints every checkpoint's mean token entropy on the probe conversations (JSON lines of
{"messages": [...]}, the SFT data's format) and the pick: the latest checkpoint in the band,
else the nearest (lingjax/posttrain/selection.py). Then train RL from it with
`--config.train.init_from=runs/sft --config.train.objective=c3po` after keeping only that step,
or export it (`lingjax.cli.merge --checkpoints=STEP:1`). Bad input is one error and exit 2.
"""

from __future__ import annotations

import json
import os

from absl import flags, logging

from lingjax.cli import common

flags.DEFINE_string("workdir", None, "The SFT run's training workdir.")
flags.DEFINE_string("probe", None, "Conversations (.jsonl, the SFT format) to measure on.")
flags.DEFINE_list("band", ["0.3", "0.5"], "The entropy band in nats: LOW,HIGH.")
flags.DEFINE_string("chat_template", "auto", "auto, plain, ling, ling2 or a .jinja file.")
flags.DEFINE_integer("rows", 8, "Rows per probe batch.")
flags.DEFINE_string("out", None, "Write the rows and the pick as JSON here (must not exist).")
flags.DEFINE_string("plot", None, "Draw entropy against step to this PNG (must not exist).")


def main(argv: list[str]) -> None:
    del argv
    F = common.FLAGS
    if not F.workdir or not F.probe:
        common.usage_error("--workdir=SFT_RUN and --probe=CONVERSATIONS.jsonl are required")
    try:
        band = tuple(float(x) for x in F.band)
        assert len(band) == 2 and 0 <= band[0] <= band[1]
    except (ValueError, AssertionError):
        common.usage_error(f"--band={','.join(F.band)}: give LOW,HIGH in nats, 0 <= LOW <= HIGH")
    for path in (F.out, F.plot):
        if path and os.path.exists(path):
            common.usage_error(f"{path} exists; choose a new path or remove it")
    logging.set_verbosity(logging.ERROR)  # orbax logs every restore
    from lingjax.data import CorpusError, TokenizerError
    from lingjax.posttrain.selection import checkpoint_entropies, select_by_entropy

    try:
        rows = list(checkpoint_entropies(F.workdir, F.probe, chat=F.chat_template, rows=F.rows))
        pick = select_by_entropy(rows, band)
    except (ValueError, CorpusError, TokenizerError) as e:
        common.usage_error(str(e))
    where = "in" if pick["in_band"] else "nearest to"
    print(
        f"pick: step {pick['step']}, entropy {pick['entropy']:.4f} ({where} the band "
        f"{band[0]}-{band[1]})"
    )
    if F.out:
        with open(F.out, "w") as f:
            json.dump({"band": band, "rows": rows, "pick": pick}, f, indent=1)
    if F.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.plot([r["step"] for r in rows], [r["entropy"] for r in rows], "o-")
        ax.axhspan(*band, color="green", alpha=0.15, label="band")
        ax.plot([pick["step"]], [pick["entropy"]], "r*", ms=12, label="pick")
        ax.set_xlabel("SFT step")
        ax.set_ylabel("mean token entropy on the probe (nats)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(F.plot, dpi=110)


if __name__ == "__main__":
    common.run(main)
