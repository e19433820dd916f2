"""Training datasets from judged, corrected experience.

``build_dataset(store, kind, fmt, out)`` builds SFT, DPO, KTO or reward data in
TRL, OpenAI or ShareGPT columns, as JSONL or Parquet, redacted by default,
deduplicated, split with no user or conversation on both sides, with a dataset
card and a lineage manifest (so ``forget`` marks it stale). Frozen regression
suites and forgotten users never get in. See ``formats`` for the row specs.
"""

from afterword.datasets.build import DatasetResult, build_dataset, export_items, list_exports
from afterword.datasets.formats import FORMATS, KINDS, Example, check_row, from_openai, from_sharegpt

__all__ = [
    "KINDS",
    "FORMATS",
    "Example",
    "DatasetResult",
    "build_dataset",
    "list_exports",
    "export_items",
    "check_row",
    "from_openai",
    "from_sharegpt",
]
