"""Judging responses in hindsight: signals, features, the learned head, the judge, the benchmark.

Public names: :class:`HindsightJudge`, :class:`JudgeConfig`, :class:`HeadModel`,
and :func:`run_bench` (imported lazily, as it pulls in scikit-learn).
"""

from .hindsight import HindsightJudge, label_for_score
from .judge_config import JudgeConfig
from .model import HeadModel, default_model_path, load_default

__all__ = [
    "HindsightJudge",
    "JudgeConfig",
    "HeadModel",
    "default_model_path",
    "load_default",
    "label_for_score",
    "run_bench",
]


def __getattr__(name: str):  # noqa: ANN202 - lazy import keeps sklearn off the judging path
    if name == "run_bench":
        from .bench import run_bench

        return run_bench
    raise AttributeError(name)
