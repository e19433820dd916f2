"""The public API is exactly ``afterword.__all__``: pinned here, every name resolves, nothing private leaks."""

from __future__ import annotations

import types

import afterword

DOCUMENTED = {
    "__version__",
    # capture
    "wrap",
    "feedback",
    # store and import
    "Store",
    "run_import",
    "search",
    "forget_user",
    # records
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
    # errors
    "AfterwordError",
    "StoreError",
    "NotFoundError",
    "ImportRecordError",
    "MissingExtraError",
}


def test_all_is_exactly_the_documented_set() -> None:
    assert len(afterword.__all__) == len(set(afterword.__all__)), "duplicates in __all__"
    assert set(afterword.__all__) == DOCUMENTED


def test_every_name_resolves() -> None:
    for name in afterword.__all__:
        assert getattr(afterword, name) is not None, name
    ns: dict[str, object] = {}
    exec("from afterword import *", ns)
    assert set(ns) - {"__builtins__"} == DOCUMENTED


def test_no_private_names_leak() -> None:
    assert [n for n in afterword.__all__ if n.startswith("_") and n != "__version__"] == []
    extra = [
        n
        for n in dir(afterword)
        if not n.startswith("_")
        and n not in afterword.__all__
        and not isinstance(getattr(afterword, n), types.ModuleType)
    ]
    assert extra == [], f"public-looking names outside __all__: {extra}"


def test_public_objects_come_from_afterword() -> None:
    for name in afterword.__all__:
        obj = getattr(afterword, name)
        if name != "__version__":
            assert obj.__module__.startswith("afterword."), (name, obj.__module__)
            assert not any(part.startswith("_") for part in obj.__module__.split(".")), (name, obj.__module__)


def test_errors_form_one_tree() -> None:
    for name in ("StoreError", "NotFoundError", "ImportRecordError", "MissingExtraError"):
        assert issubclass(getattr(afterword, name), afterword.AfterwordError)
    assert issubclass(afterword.NotFoundError, afterword.StoreError)
    assert isinstance(afterword.__version__, str) and afterword.__version__.count(".") == 2
