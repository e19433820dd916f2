"""afterword: learn from experience.

Capture every LLM interaction, judge each response in hindsight from what the
user did next, turn corrections into memories that are injected at
generation time, and export what was learned as training data.

The public API is exactly ``__all__``; ``tests/test_public_api.py`` pins it.
"""

from afterword.capture import feedback, wrap
from afterword.errors import (
    AfterwordError,
    ImportRecordError,
    MissingExtraError,
    NotFoundError,
    StoreError,
)
from afterword.importers import run_import
from afterword.records import (
    Conversation,
    Evidence,
    Feedback,
    FeedbackKind,
    Judgment,
    JudgmentSource,
    Label,
    Memory,
    MemoryKind,
    Message,
    Role,
)
from afterword.store import Store, forget_user, search

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "wrap",
    "feedback",
    "Store",
    "run_import",
    "search",
    "forget_user",
    "Conversation",
    "Message",
    "Feedback",
    "FeedbackKind",
    "Judgment",
    "JudgmentSource",
    "Label",
    "Evidence",
    "Memory",
    "MemoryKind",
    "Role",
    "AfterwordError",
    "StoreError",
    "NotFoundError",
    "ImportRecordError",
    "MissingExtraError",
]
