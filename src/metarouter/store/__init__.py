"""Storage backends behind one interface, chosen by the database URL."""

from __future__ import annotations

from ..errors import require_extra
from .base import KeyRecord, Store, hash_key, new_generation_id, parse_key, verify_key


def open_store(url: str) -> Store:
    """``sqlite:///relative.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:`` or ``postgresql://…``;
    budget holds are served from per-process leases (:class:`~.lease.BudgetLeases`) where a key is far from its
    limit."""
    from .lease import BudgetLeases

    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return BudgetLeases(SQLiteStore(url[len("sqlite:///"):]))
    if url.startswith(("postgres://", "postgresql://")):
        require_extra("asyncpg", "postgres", "A PostgreSQL database_url")
        from .postgres import PostgresStore

        return BudgetLeases(PostgresStore(url))
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://…")


__all__ = ["KeyRecord", "Store", "hash_key", "new_generation_id", "open_store", "parse_key", "verify_key"]
