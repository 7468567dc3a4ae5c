"""Content-Security-Policy on every response: scripts, styles and connections from our own origin only."""

from __future__ import annotations

from collections.abc import Callable

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

# No 'unsafe-inline' and no 'unsafe-eval': a script that slipped into the page (through model output,
# say) would not run. htmx is told not to inject its indicator <style> or evaluate code (base.html).
# img-src 'self': a remote image can never load, so nothing leaves through an image URL.
POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# The admin's own templates (the cost report) carry an inline <style>; its scripts stay strict.
ADMIN_POLICY = POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def with_policy(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    if "Content-Security-Policy" not in response:
        response["Content-Security-Policy"] = ADMIN_POLICY if request.path.startswith("/admin/") else POLICY
    return response


@sync_and_async_middleware
def csp_middleware(get_response: Callable) -> Callable:
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponseBase:
            return with_policy(request, await get_response(request))

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        return with_policy(request, get_response(request))

    return middleware
