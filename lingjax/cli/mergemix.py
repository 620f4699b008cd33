"""MergeMix: train one short expert per domain from a base checkpoint, then find the data
mixture whose merge of the experts scores best on a target corpus; prints it as a flag.

    python -m lingjax.cli.mergemix --base=runs/base --domains=code=data/code,docs=data/docs \
        --target=data/target --root=runs/mergemix --expert_steps=50 \
        --config.data.eval_fraction=0.05 --config.eval.batches=8
    # ... mergemix: best mixture code 0.27, docs 0.73: held-out loss 2.913 (uniform 2.951)
    # --config.data.mixture=code=data/code:0.27,docs=data/docs:0.73

The model is the base's (a params checkpoint or a training workdir); --config and
--config.* set the rest (batch, sequence length, LR, the held-out split of every corpus).
Experts train in --root/<name> and resume there if interrupted. Bad input (fewer than two
domains, a missing corpus, a base of another architecture) is one error line and exit 2.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from lingjax.cli import common

common.define_config_flag("tiny")
flags.DEFINE_string("base", None, "The base checkpoint: a params checkpoint or a workdir.")
flags.DEFINE_string("domains", None, "The domain corpora, name=DIR,name=DIR,...")
flags.DEFINE_string("target", None, "The corpus whose held-out loss the mixture minimises.")
flags.DEFINE_string("root", None, "Where the domain experts train (one workdir each).")
flags.DEFINE_integer("expert_steps", 50, "Steps of each domain expert (constant LR).")
flags.DEFINE_float("lr", None, "The experts' constant LR (default: the config's peak LR).")
flags.DEFINE_integer("maxiter", 30, "SLSQP iterations of the mixture search.")


def main(argv: list[str]) -> None:
    del argv
    F = common.FLAGS
    for name in ("base", "domains", "target", "root"):
        if not getattr(F, name):
            common.usage_error(f"--{name} is required (see python -m lingjax.cli.mergemix --help)")
    from lingjax.checkpoint import ParamsCheckpointError, read_config
    from lingjax.configs import ConfigError
    from lingjax.configs.overrides import parse_mixture
    from lingjax.studies.mergemix import mergemix

    try:
        domains = {s.name: s.path for s in parse_mixture("--domains", F.domains)}
        cfg = common.resolved_config()
        cfg = dataclasses.replace(cfg, model=read_config(F.base))
        result = mergemix(
            cfg,
            base=F.base,
            domains=domains,
            target=F.target,
            root=F.root,
            expert_steps=F.expert_steps,
            lr=F.lr,
            maxiter=F.maxiter,
        )
    except (ConfigError, ParamsCheckpointError, ValueError) as e:
        common.usage_error(str(e))
        return
    shares = ", ".join(f"{n} {a:.3f}" for n, a in result.alpha.items())
    print(
        f"mergemix: best mixture {shares}: held-out loss {result.loss:.4f} (uniform "
        f"{result.uniform_loss:.4f}) after {result.search.evaluations} merges"
    )
    print(result.mixture_flag)


if __name__ == "__main__":
    common.run(main)
