"""Evaluation: generation with a KV cache (prefill + decode; greedy, temperature, top-p), packed
log-likelihood scoring of (context, continuation) pairs, task files (multiple choice: label,
cloze, BOSE blank-ppl; completion), pass@k and Kendall's tau, and the scores of every
checkpoint of a run (with MaP merges).

out = lingjax.generate(cfg.model, variables, [[5, 6, 7]], max_new_tokens=16)
scores = Scorer(cfg.model, variables)([(context_ids, continuation_ids), ...])
rows = list(evaluate_checkpoints("runs/x", [read_task("copy.jsonl")], merge_last=3))
"""

from lingjax.evaluate.checkpoints import evaluate_checkpoints
from lingjax.evaluate.generation import (
    Generation,
    generate,
    inference_config,
    init_cache,
    pad_prompts,
    sample,
    step,
)
from lingjax.evaluate.routing import RoutingStats, js_divergence, plot_routing, routing_by_domain
from lingjax.evaluate.scoring import Packed, Scorer, Scores, pack
from lingjax.evaluate.stats import kendall_tau, mean_pass_at_k, pass_at_k
from lingjax.evaluate.synthetic import synthetic_tasks, write_synthetic_tasks
from lingjax.evaluate.tasks import (
    MODES,
    NORMS,
    ICLiP,
    Task,
    TaskFileError,
    choice_texts,
    evaluate_generative,
    evaluate_task,
    evaluate_tasks,
    extract_answer,
    iclip_prompt,
    read_task,
)

__all__ = [
    "MODES",
    "NORMS",
    "Generation",
    "ICLiP",
    "Packed",
    "RoutingStats",
    "Scorer",
    "Scores",
    "Task",
    "TaskFileError",
    "choice_texts",
    "evaluate_checkpoints",
    "evaluate_generative",
    "evaluate_task",
    "evaluate_tasks",
    "extract_answer",
    "generate",
    "iclip_prompt",
    "inference_config",
    "init_cache",
    "js_divergence",
    "kendall_tau",
    "mean_pass_at_k",
    "pack",
    "pad_prompts",
    "pass_at_k",
    "plot_routing",
    "read_task",
    "routing_by_domain",
    "sample",
    "step",
    "synthetic_tasks",
    "write_synthetic_tasks",
]
