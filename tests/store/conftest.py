"""Store fixtures: the same tests against SQLite (a fresh file) and PostgreSQL (a fresh schema per test).

PostgreSQL must be running (``METAROUTER_TEST_PG_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``);
these tests skip only when ``METAROUTER_TEST_NO_SERVICES=1``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import urllib.parse

import pytest

PG_URL = os.environ.get("METAROUTER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
NO_SERVICES = os.environ.get("METAROUTER_TEST_NO_SERVICES") == "1"


def with_search_path(url: str, schema: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + [("search_path", schema)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _pg(statement: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
def pg_schema():
    """A fresh schema, dropped afterwards: (URL whose search_path is that schema, schema name)."""
    if NO_SERVICES:
        pytest.skip("METAROUTER_TEST_NO_SERVICES=1")
    schema = f"mr_test_{secrets.token_hex(6)}"
    _pg(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(PG_URL, schema), schema
    finally:
        _pg(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class Backend:
    """How to open (and reopen) one store, and how to read everything it stored, for assertions."""

    def __init__(self, kind: str, url: str, schema: str | None = None, path: str | None = None):
        self.kind, self.url, self.schema, self.path = kind, url, schema, path

    def open_store(self):
        from metarouter.store import open_store

        return open_store(self.url)

    async def dump(self) -> str:
        """Every stored value of every table, as one text."""
        if self.kind == "sqlite":
            import sqlite3

            conn = sqlite3.connect(self.path)
            try:
                out = []
                for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                    out += [repr(r) for r in conn.execute(f"SELECT * FROM {name}")]
                return "\n".join(out)
            finally:
                conn.close()
        import asyncpg

        conn = await asyncpg.connect(self.url)
        try:
            out = []
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", self.schema):
                out += [x[0] for x in await conn.fetch(f"SELECT t::text FROM {r[0]} t")]
            return "\n".join(out)
        finally:
            await conn.close()

    async def sql(self, query: str, *args):
        """Run one statement directly against the database (rows as tuples)."""
        if self.kind == "sqlite":
            import sqlite3

            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                return [tuple(r) for r in conn.execute(query.replace("$1", "?").replace("$2", "?"), args)]
            finally:
                conn.close()
        import asyncpg

        conn = await asyncpg.connect(self.url)
        try:
            return [tuple(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    async def schema_before(self, migration: list[str]) -> None:
        """The schema as it was just before ``migration`` (one of :data:`metarouter.store.sql._HISTORY`'s
        groups) was applied, with ``schema_version`` saying so: a database of an older release."""
        from metarouter.store.sql import _HISTORY, POSTGRES, SQLITE, migrations

        versions = migrations(SQLITE if self.kind == "sqlite" else POSTGRES)
        await self.sql("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for n, statements in enumerate(versions[:_HISTORY[self.kind].index(migration)], start=1):
            for statement in statements:
                await self.sql(statement)
            await self.sql(f"INSERT INTO schema_version (version) VALUES ({n})")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        path = str(tmp_path / "store.db")
        yield Backend("sqlite", f"sqlite:///{path}", path=path)
    else:
        url, schema = request.getfixturevalue("pg_schema")
        yield Backend("postgres", url, schema=schema)


@pytest.fixture
async def store(backend):
    st = backend.open_store()
    await st.open()
    try:
        yield st
    finally:
        await st.close()
