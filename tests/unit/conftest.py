"""Fixtures of the in-process unit tests."""

from __future__ import annotations

import pytest

from metarouter.store.sqlite import SQLiteStore


@pytest.fixture
async def store(tmp_path):
    """A real SQLite store in the test's own directory, open for the test."""
    st = SQLiteStore(tmp_path / "m.db")
    await st.open()
    yield st
    await st.close()
