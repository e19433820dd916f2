"""The review UI: a queue of judged responses for humans to confirm, relabel or correct.

:mod:`afterword.ui.review` is the library (queue order, decisions as records);
:mod:`afterword.ui.app` serves it with one static page; :mod:`afterword.ui.auth`
holds sign-in and CSRF.
"""

from afterword.ui.review import accept, add_review_item, correct, review_detail, review_queue, set_label

__all__ = ["review_queue", "review_detail", "accept", "set_label", "correct", "add_review_item", "create_app"]


def __getattr__(name: str):  # noqa: ANN202 - fastapi is imported only when the app is wanted
    if name == "create_app":
        from afterword.ui.app import create_app

        return create_app
    raise AttributeError(name)
