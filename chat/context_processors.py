"""Template context every page needs."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def chat_flags(request: HttpRequest) -> dict[str, object]:
    # The one-click demo login exists only in DEBUG; production never has a default account.
    return {"demo_login_enabled": settings.DEBUG}
