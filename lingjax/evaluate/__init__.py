"""Evaluation: generation with a KV cache (prefill + decode; greedy, temperature, top-p), packed
log-likelihood scoring of (context, continuation) pairs, task files (multiple choice: label,
cloze, BOSE blank-ppl; completion), pass@k and Kendall's tau, the scores of every
checkpoint of a run (with MaP merges), BOSE's benchmark filter (stability, consistency) and
capability-loss vs task-score correlations, and routing by data domain.

out = lingjax.generate(cfg.model, variables, [[5, 6, 7]], max_new_tokens=16)
scores = Scorer(cfg.model, variables)([(context_ids, continuation_ids), ...])
rows = list(evaluate_checkpoints("runs/x", [read_task("copy.jsonl")], merge_last=3))
correlate(read_rows("runs/x"))       # capability/* x task/* over the run's checkpoints
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
from lingjax.evaluate.report import (
    Correlation,
    ReportError,
    Verdict,
    consistency,
    correlate,
    filter_benchmarks,
    final_scores,
    join_by_step,
    plot_correlations,
    read_rows,
    stability,
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
    load_tasks,
    read_task,
)

__all__ = [
    "MODES",
    "NORMS",
    "Correlation",
    "Generation",
    "ICLiP",
    "Packed",
    "ReportError",
    "RoutingStats",
    "Scorer",
    "Scores",
    "Task",
    "TaskFileError",
    "Verdict",
    "choice_texts",
    "consistency",
    "correlate",
    "evaluate_checkpoints",
    "evaluate_generative",
    "evaluate_task",
    "evaluate_tasks",
    "extract_answer",
    "filter_benchmarks",
    "final_scores",
    "generate",
    "iclip_prompt",
    "inference_config",
    "init_cache",
    "join_by_step",
    "js_divergence",
    "kendall_tau",
    "load_tasks",
    "mean_pass_at_k",
    "pack",
    "pad_prompts",
    "pass_at_k",
    "plot_correlations",
    "plot_routing",
    "read_rows",
    "read_task",
    "routing_by_domain",
    "sample",
    "stability",
    "step",
    "synthetic_tasks",
    "write_synthetic_tasks",
]
