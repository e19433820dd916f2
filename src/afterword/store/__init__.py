"""Storage: schema, migrations, the Store, search and forgetting."""

from afterword.store.engine import make_engine, resolve_url
from afterword.store.search import forget_user, search, sync_fulltext
from afterword.store.store import ImportCounts, Store, conversation_id_for, message_id_for

__all__ = [
    "Store",
    "ImportCounts",
    "conversation_id_for",
    "message_id_for",
    "make_engine",
    "resolve_url",
    "search",
    "sync_fulltext",
    "forget_user",
]
