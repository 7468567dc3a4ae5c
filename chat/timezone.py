"""The user's time zone, from the `tz` cookie the page sets (chat.js), for dates shown in their local day."""

from __future__ import annotations

import re
import zoneinfo

from django.http import HttpRequest, HttpResponseBase
from django.utils import timezone
from django.utils.deprecation import MiddlewareMixin

COOKIE = "tz"
# IANA names are short and plain ("America/Argentina/ComodRivadavia" is among the longest); anything
# else is not looked up at all, so a cookie can never name a path on the server's disk.
_NAME = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*")
MAX_NAME_CHARS = 64


def zone_named(name: str) -> zoneinfo.ZoneInfo | None:
    """The IANA time zone called `name`, or None when there is none by that name."""
    if len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


class TimezoneMiddleware(MiddlewareMixin):
    """Activates the cookie's zone for the request, else settings.TIME_ZONE. A MiddlewareMixin, so that it
    runs in the one thread hop of Django's own middleware (project/tuning/middleware.py)."""

    def process_request(self, request: HttpRequest) -> None:
        zone = zone_named(request.COOKIES.get(COOKIE, ""))
        if zone is None:
            timezone.deactivate()
        else:
            timezone.activate(zone)

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        timezone.deactivate()
        return response
