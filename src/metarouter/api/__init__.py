"""HTTP surface of metarouter."""

from __future__ import annotations

from ..config import Settings
from .app import create_app


def build_full_app(settings: Settings, store=None):
    """The app with every feature wired in (auto routing, activity, …): what ``metarouter serve`` runs."""
    app = create_app(settings, store)
    return app


__all__ = ["build_full_app", "create_app"]
