"""Post-training at CPU-tiny scale: SFT `tiny` on synthetic addition conversations, pick the
checkpoint to start RL from by its entropy, then C3PO on addition prompts with an exact-match
reward. Does the reward rise, and does every optimiser step train exactly Phi tokens?

    .venv/bin/python experiments/posttrain/run.py               # ~8 minutes on 2 CPU cores
    .venv/bin/python experiments/posttrain/run.py --plot_only   # redraw posttrain.png

Data (generated, seeded): "a+b=" with a, b in [0, --max_operand) (20: 400 sums); 4,000 SFT
conversations, 1,000 RL prompts, 100 held-out sums (no pair of the held-out set is in the
others) and 200 probe conversations for the entropy. The byte tokenizer, the "plain" chat
template. SFT: tiny with one device, batch 16 x 64, a params copy every 50 steps. Selection:
the checkpoints' mean token entropy on the probe, Ring-lite's band 0.3-0.5 nats. C3PO from
the pick: K = 8 samples of 8 prompts per draw, Phi = 256 response tokens a step, temperature
1, Ring-lite's eps 0.2, KL 1e-3, entropy 5e-4. Held-out accuracy: greedy answers of the SFT
pick and of the RL model.
Writes results.json and posttrain.png beside this file (runs under --out, restartable).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=1"
).strip()

import argparse
import datetime
import json
import platform
import sys

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from lingjax import configs  # noqa: E402
from lingjax.checkpoint import load, save_params  # noqa: E402
from lingjax.data.chat import chat_template, encode_prompt  # noqa: E402
from lingjax.data.tokenizer import ByteTokenizer  # noqa: E402
from lingjax.evaluate import generate  # noqa: E402
from lingjax.posttrain import train  # noqa: E402
from lingjax.posttrain.selection import checkpoint_entropies, select_by_entropy  # noqa: E402
from lingjax.train.metrics import METRICS_FILE, read_metrics  # noqa: E402

BAND = (0.3, 0.5)
COMMON = {
    "train.seq_len": 64,
    "train.batch_size": 16,
    "train.log_every": 10,
    "train.routing_warmup_steps": 0,
    "mesh.data": 1,
    "data.chat_template": "plain",
}


def _sums(rng: np.random.Generator, n: int, exclude: set, top: int) -> list[tuple[int, int]]:
    out = []
    while len(out) < n:
        a, b = (int(x) for x in rng.integers(0, top, 2))
        if (a, b) not in exclude:
            out.append((a, b))
    return out


def make_data(out: str, top: int) -> dict[str, str]:
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    held: set = set()
    while len(held) < 100:
        held |= set(_sums(rng, 1, held, top))
    files = {}

    def write(name, lines):
        path = os.path.join(out, f"{name}.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines)
        files[name] = path

    def conv(a, b):
        return {
            "messages": [
                {"role": "user", "content": f"{a}+{b}="},
                {"role": "assistant", "content": str(a + b)},
            ]
        }

    write("sft", [conv(a, b) for a, b in _sums(rng, 4000, held, top)])
    write("probe", [conv(a, b) for a, b in _sums(rng, 200, held, top)])
    prompts = _sums(rng, 1000, held, top)
    write("prompts", [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in prompts])
    write("heldout", [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in sorted(held)])
    return files


def accuracy(workdir: str, step: int, heldout: str) -> float:
    """Greedy exact-match accuracy on the held-out prompts of checkpoint `step` of a run."""
    model_cfg, variables = load(workdir, step=step)
    tok = ByteTokenizer()
    template = chat_template("plain", tok)
    with open(heldout) as f:
        lines = [json.loads(x) for x in f]
    prompts = [
        encode_prompt(template, tok, [{"role": "user", "content": x["prompt"]}]) for x in lines
    ]
    out = generate(
        model_cfg,
        variables,
        prompts,
        max_new_tokens=6,
        temperature=0.0,
        eos_id=tok.eos_id,
        pad_to=max(map(len, prompts)),
    )
    right = 0
    for row, n, line in zip(out.tokens, out.lengths, lines, strict=True):
        text = tok.decode(row[:n][row[:n] != tok.eos_id]).strip().split("\n")[0]
        right += text == line["answer"]
    return right / len(lines)


def _plot(results: dict, path: str) -> None:
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    s, loss = zip(*results["sft_curve"], strict=True)
    a.plot(s, loss, "-")
    a.set_xlabel("SFT step")
    a.set_ylabel("loss on the assistant's tokens")
    a.set_title("SFT (tiny, synthetic addition)")
    e = results["entropies"]
    b.plot([r["step"] for r in e], [r["entropy"] for r in e], "o-")
    b.axhspan(*BAND, color="green", alpha=0.15, label="Ring-lite band")
    pick = results["pick"]
    b.plot([pick["step"]], [pick["entropy"]], "r*", ms=14, label=f"pick: step {pick['step']}")
    b.set_xlabel("SFT checkpoint")
    b.set_ylabel("mean token entropy on the probe (nats)")
    b.legend(fontsize=8)
    steps, reward = zip(*results["rl_reward"], strict=True)
    c.plot(steps, reward, "-", alpha=0.4, label="reward (step's rollouts)")
    w = max(1, min(10, len(reward)))
    smooth = np.convolve(reward, np.ones(w) / w, mode="valid")
    c.plot(steps[w - 1 :], smooth, "-", lw=2, label=f"mean of {w}")
    acc = results["heldout_accuracy"]
    c.set_title(
        f"C3PO: held-out greedy accuracy {acc['sft']:.2f} -> {acc['rl']:.2f}; "
        f"{results['phi']} tokens/step",
        fontsize=9,
    )
    c.set_xlabel("RL step")
    c.set_ylabel("exact-match reward")
    c.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/posttrain")
    p.add_argument("--sft_steps", type=int, default=600)
    p.add_argument("--rl_steps", type=int, default=200)
    p.add_argument("--max_operand", type=int, default=20)
    p.add_argument("--rl_lr", type=float, default=3e-4)
    p.add_argument("--plot_only", action="store_true")
    args = p.parse_args()
    if args.plot_only:
        with open(os.path.join(HERE, "results.json")) as f:
            _plot(json.load(f), os.path.join(HERE, "posttrain.png"))
        return
    files = make_data(os.path.join(args.out, "data"), args.max_operand)
    sft_dir, rl_dir = os.path.join(args.out, "sft"), os.path.join(args.out, "rl")
    print("== SFT", flush=True)
    train(
        configs.get(
            "tiny",
            **{
                **COMMON,
                "train.objective": "sft",
                "data.instruct": files["sft"],
                "train.steps": args.sft_steps,
                "train.lr": 3e-3,
                "checkpoint.params_every_steps": 50,
            },
        ),
        sft_dir,
    )
    print("== entropy of the SFT checkpoints", flush=True)
    entropies = list(checkpoint_entropies(sft_dir, files["probe"], chat="plain"))
    pick = select_by_entropy(entropies, BAND)
    print(f"pick: {pick}", flush=True)
    # RL starts from the picked checkpoint, written as a params checkpoint.
    start = os.path.join(args.out, f"sft_step{pick['step']}")
    if not os.path.exists(start):
        model_cfg, variables = load(sft_dir, step=pick["step"])
        save_params(start, model_cfg, variables)
    print("== C3PO", flush=True)
    phi = 256
    train(
        configs.get(
            "tiny",
            **{
                **COMMON,
                "train.objective": "c3po",
                "data.instruct": files["prompts"],
                "train.init_from": start,
                "train.steps": args.rl_steps,
                "train.batch_size": 40,
                "train.seq_len": 128,  # 4 short rollouts (prompt + answer) a row
                "train.lr": args.rl_lr,
                "train.warmup_steps": 5,
                "train.log_every": 1,
                "train.anomaly.loss_z": 0.0,  # RL losses swing by sign: no spike skipping
                "train.c3po.budget": phi,
                "train.c3po.samples": 8,
                "train.c3po.prompts": 8,
                "train.c3po.max_new_tokens": 6,
                "checkpoint.params_every_steps": args.rl_steps,
            },
        ),
        rl_dir,
    )
    sft_rows = read_metrics(os.path.join(sft_dir, METRICS_FILE))
    rl_rows = read_metrics(os.path.join(rl_dir, METRICS_FILE))
    tokens = sorted({r["tokens"] for r in rl_rows})
    results = {
        "sft_curve": [(r["step"], r["loss"]) for r in sft_rows],
        "entropies": entropies,
        "pick": pick,
        "phi": phi,
        "tokens_per_step": tokens,
        "rl_reward": [(r["step"], r["reward"]) for r in rl_rows],
        "rl_metrics_last": {
            k: rl_rows[-1][k] for k in ("kl", "entropy", "clip_fraction", "response_length")
        },
        "heldout_accuracy": {
            "sft": accuracy(sft_dir, pick["step"], files["heldout"]),
            "rl": accuracy(rl_dir, args.rl_steps, files["heldout"]),
        },
        "env": {
            "date": datetime.date.today().isoformat(),
            "jax": jax.__version__,
            "python": platform.python_version(),
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "command": " ".join(
                [os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]]
            ),
        },
    }
    first, last = (
        np.mean([r for _, r in results["rl_reward"][:10]]),
        np.mean([r for _, r in results["rl_reward"][-10:]]),
    )
    results["reward_first_10"], results["reward_last_10"] = float(first), float(last)
    print(
        json.dumps(
            {
                k: results[k]
                for k in (
                    "pick",
                    "tokens_per_step",
                    "heldout_accuracy",
                    "reward_first_10",
                    "reward_last_10",
                )
            },
            indent=1,
        )
    )
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    _plot(results, os.path.join(HERE, "posttrain.png"))


if __name__ == "__main__":
    main()
