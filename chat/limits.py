"""Spending limits and rate limits checked before any upstream request (filled in by the cost-review work)."""

from __future__ import annotations

from typing import Any


def refusal_for(user: Any) -> str | None:
    """Why this user may not start a new reply now, or None when they may."""
    return None
