"""Does lm-evaluation-harness, through the `lingjax` model, give the numbers lingjax's own
evaluation gives on the same tasks and weights, and at what cost?

    .venv/bin/python experiments/eval/harness.py          # ~3 minutes on 2 CPU cores

The README's main job (`tiny` on the default corpus, 150 steps) unless --checkpoint names
weights; the bundled synthetic tasks (64 examples each) written as lm-eval YAML tasks over local
JSON lines (multiple choice for brackets, add and docstring; loglikelihood for copy and lines),
scored by lm-eval (`lm_eval.simple_evaluate(model="lingjax")`) and by
`lingjax.evaluate.evaluate_tasks` in cloze mode (the same prompts: "<question>\\nAnswer:" and
" <choice>"). Writes harness.json here; prints RESULTS.md's table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import jax

import lingjax.evaluate.harness  # noqa: F401  registers the lm-eval model "lingjax"
from lingjax import configs
from lingjax.checkpoint import load
from lingjax.data.tokenizer import recorded_tokenizer
from lingjax.evaluate import Scorer, evaluate_tasks, load_tasks, synthetic_tasks
from lingjax.train import train

ROWS, SEQ = 8, 256
# lingjax metric -> lm-eval metric (multiple choice: summed log-likelihood; completion: greedy)
PAIRS = {"acc": "acc,none", "exact": "acc,none"}


def _write_lm_eval_tasks(root: str, n: int) -> list[str]:
    os.makedirs(root, exist_ok=True)
    names = []
    for name, examples in synthetic_tasks(n).items():
        data = os.path.join(root, f"{name}.jsonl")
        with open(data, "w") as f:
            f.writelines(json.dumps(ex) + "\n" for ex in examples)
        head = f"task: syn_{name}\ndataset_path: json\n"
        head += f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        if "choices" in examples[0]:
            body = (
                'output_type: multiple_choice\ndoc_to_text: "{{question}}\\nAnswer:"\n'
                "doc_to_choice: '{{choices}}'\ndoc_to_target: answer\n"
                "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
            )
        else:
            body = (
                "output_type: loglikelihood\ndoc_to_text: '{{context}}'\n"
                "doc_to_target: '{{continuation}}'\ntarget_delimiter: ''\n"
                "metric_list:\n  - metric: acc\n  - metric: perplexity\n"
            )
        with open(os.path.join(root, f"{name}.yaml"), "w") as f:
            f.write(head + body)
        names.append(name)
    return names


def main() -> None:
    import lm_eval

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/harness")
    p.add_argument("--checkpoint", default="", help="weights to score (default: train tiny)")
    p.add_argument("--examples", type=int, default=64)
    a = p.parse_args()
    checkpoint = a.checkpoint or os.path.join(a.out, "tiny")
    if not a.checkpoint and not os.path.isfile(os.path.join(checkpoint, "metrics.jsonl")):
        train(configs.get("tiny"), checkpoint)
    names = _write_lm_eval_tasks(os.path.join(a.out, "lm_eval_tasks"), a.examples)

    cfg, variables = load(checkpoint)
    t0 = time.perf_counter()
    ours = evaluate_tasks(
        load_tasks(["synthetic"], a.examples),
        Scorer(cfg, variables, rows=ROWS, seq_len=SEQ),
        recorded_tokenizer(checkpoint),
        mode="cloze",
    )
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="lingjax",
        model_args=f"checkpoint={checkpoint},seq_len={SEQ}",
        batch_size=ROWS,
        tasks=[f"syn_{n}" for n in names],
        task_manager=lm_eval.tasks.TaskManager(include_path=os.path.join(a.out, "lm_eval_tasks")),
        bootstrap_iters=0,
    )
    theirs_s = time.perf_counter() - t0
    table = []
    for name in names:
        res = out["results"][f"syn_{name}"]
        metric = "acc" if f"task/{name}/acc" in ours else "exact"
        table.append(
            {
                "task": name,
                "metric": metric,
                "lingjax": ours[f"task/{name}/{metric}"],
                "lm_eval": res["acc,none"],
                "lm_eval_other": {k: v for k, v in res.items() if k not in ("alias", "acc,none")},
            }
        )
    results = {
        "checkpoint": checkpoint,
        "table": table,
        "seconds": {"lingjax": ours_s, "lm_eval": theirs_s},
        "env": {
            "date": str(datetime.date.today()),
            "jax": jax.__version__,
            "lm_eval": lm_eval.__version__,
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "command": " ".join(["python", *sys.argv]),
        },
    }
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "harness.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("| task | metric | lingjax.evaluate | lm-eval (model=lingjax) |")
    print("|---|---|---|---|")
    for r in table:
        print(f"| {r['task']} | {r['metric']} | {r['lingjax']:.4f} | {r['lm_eval']:.4f} |")
    print(f"seconds: lingjax {ours_s:.1f}, lm-eval {theirs_s:.1f} (each includes its compiles)")


if __name__ == "__main__":
    main()
