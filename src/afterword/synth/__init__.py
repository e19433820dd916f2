"""Growing data: verified synthetic expansion of trusted seeds, and reverse-engineering of expert artifacts.

- :func:`expand` generates variants of trusted seeds (corrections, suite items, a seed file) with a
  diversity strategy, keeps those that pass the filters (dedup, similarity bounds, executable
  verifiers, a rubric judge), and saves them with provenance as ``source="synthetic"`` conversations.
- :func:`cap_synthetic` bounds the synthetic share of any dataset.
- :mod:`afterword.synth.artifacts`: ``ingest`` / ``reverse`` / ``replay`` for expert documents.
"""

from afterword.synth.expand import ExpansionResult, Strategy, expand, load_seeds, parse_variant, save_synthetic
from afterword.synth.filters import FilterConfig, FilterReport, run_filters
from afterword.synth.items import Seed, SynthItem, infer_kind, read_seed_file
from afterword.synth.verifiers import (
    VerifyResult,
    arithmetic_in,
    cap_synthetic,
    check_math,
    eval_arithmetic,
    is_synthetic,
    parse_number,
    run_python_tests,
)

__all__ = [
    "ExpansionResult",
    "Strategy",
    "expand",
    "load_seeds",
    "parse_variant",
    "save_synthetic",
    "FilterConfig",
    "FilterReport",
    "run_filters",
    "Seed",
    "SynthItem",
    "infer_kind",
    "read_seed_file",
    "VerifyResult",
    "arithmetic_in",
    "cap_synthetic",
    "check_math",
    "eval_arithmetic",
    "is_synthetic",
    "parse_number",
    "run_python_tests",
]
