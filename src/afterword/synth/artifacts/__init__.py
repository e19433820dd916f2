"""Artifact reverse-engineering: mine expert documents for the process that produced them.

``ingest`` reads a folder of memos (markdown, text, HTML, PDF), extracting the
cited sources and the conclusion; ``reverse`` reconstructs each one's question
and research steps into training records linked to the artifact; ``replay``
asks a model the reconstructed questions and scores its citations and
conclusions against the artifacts.
"""

from afterword.synth.artifacts.citations import CITATION_KINDS, Citation, extract_citations, match_citations
from afterword.synth.artifacts.documents import Document, read_document
from afterword.synth.artifacts.ingest import (
    Artifact,
    IngestResult,
    analyse,
    extract_conclusion,
    extract_question,
    get_artifact,
    ingest,
    list_artifacts,
    llm_citations,
)
from afterword.synth.artifacts.replay import ReplayReport, judge_agreement, pick_option, replay
from afterword.synth.artifacts.reverse import ReverseResult, export_reverse, reconstruct, reverse

__all__ = [
    "CITATION_KINDS",
    "Citation",
    "extract_citations",
    "match_citations",
    "Document",
    "read_document",
    "Artifact",
    "IngestResult",
    "analyse",
    "extract_conclusion",
    "extract_question",
    "get_artifact",
    "ingest",
    "list_artifacts",
    "llm_citations",
    "ReplayReport",
    "judge_agreement",
    "pick_option",
    "replay",
    "ReverseResult",
    "export_reverse",
    "reconstruct",
    "reverse",
]
