"""Error analysis and evaluation: where the system fails, frozen into evals, and how versions compare.

The flow: :func:`mine_failures` (hard failures) → :func:`cluster_failures`
(kinds of failure) → :func:`create_suite` (frozen items, never trained on) →
:func:`run_eval` (a model version on a suite) → :func:`compare_runs` (per item,
per cluster, repeat-mistake rate) → :func:`build_report` (one HTML file).
:mod:`afterword.evals.tandem` runs a human and the AI side by side.
"""

from afterword.evals.clusters import ClusterResult, FailureCluster, cluster_failures
from afterword.evals.compare import Comparison, compare_runs, repeat_mistake_rate
from afterword.evals.failures import Failure, JudgedResponse, judged_responses, mine_failures
from afterword.evals.report import build_report
from afterword.evals.runs import EvalResult, EvalRun, get_run, list_runs, run_eval
from afterword.evals.suites import Suite, SuiteItem, create_suite, get_suite, list_suites, suite_message_ids
from afterword.evals.tandem import (
    TandemTask,
    add_task,
    answer_ai,
    answer_human,
    coaching_items,
    compare_task,
    tandem_stats,
)

__all__ = [
    "JudgedResponse",
    "Failure",
    "judged_responses",
    "mine_failures",
    "FailureCluster",
    "ClusterResult",
    "cluster_failures",
    "Suite",
    "SuiteItem",
    "create_suite",
    "get_suite",
    "list_suites",
    "suite_message_ids",
    "EvalRun",
    "EvalResult",
    "run_eval",
    "get_run",
    "list_runs",
    "Comparison",
    "compare_runs",
    "repeat_mistake_rate",
    "build_report",
    "TandemTask",
    "add_task",
    "answer_human",
    "answer_ai",
    "compare_task",
    "coaching_items",
    "tandem_stats",
]
