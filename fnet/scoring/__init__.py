"""Evaluate: tasks, prompts, and scoring a (masked) causal LM on them.

* :mod:`fnet.scoring.tasks` -- :class:`TaskSpec` (``conf/task/*.yaml``) and the task rows, local or hub;
* :mod:`fnet.scoring.prompts` -- :class:`PromptBuilder`: zero/few-shot prompts, chat templates, requests;
* :mod:`fnet.scoring.loglik` -- ``loglik`` scoring: every choice's log-probability, one forward per batch;
* :mod:`fnet.scoring.generate` -- greedy generation, the label parser, perplexity windows;
* :mod:`fnet.scoring.metrics` -- confidence intervals, chance levels, class metrics, SQuAD scores.
"""

from fnet.scoring.generate import generate_greedy, parse_choice, perplexity_windows, window_nll
from fnet.scoring.loglik import PATH_COUNTS, prefix_key_values, score_loglik
from fnet.scoring.metrics import (
    bootstrap_interval,
    chance_levels,
    class_metric,
    mcc_from_confusion,
    metric_chance,
    metric_entry,
    normalize_answer,
    squad_scores,
    wilson_interval,
)
from fnet.scoring.prompts import (
    CONTENT_FREE,
    PromptBuilder,
    Request,
    align_prefixes,
    common_prefix_len,
    sample_shots,
    use_chat_template,
)
from fnet.scoring.rows import load_task_rows
from fnet.scoring.tasks import TaskSpec, available_tasks, get_task

__all__ = [
    "CONTENT_FREE",
    "PATH_COUNTS",
    "PromptBuilder",
    "Request",
    "TaskSpec",
    "align_prefixes",
    "available_tasks",
    "bootstrap_interval",
    "chance_levels",
    "class_metric",
    "common_prefix_len",
    "generate_greedy",
    "get_task",
    "load_task_rows",
    "mcc_from_confusion",
    "metric_chance",
    "metric_entry",
    "normalize_answer",
    "parse_choice",
    "perplexity_windows",
    "prefix_key_values",
    "sample_shots",
    "score_loglik",
    "squad_scores",
    "use_chat_template",
    "wilson_interval",
    "window_nll",
]
