"""A form post over Django's request size limit, answered with words that name the message limit."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.deprecation import MiddlewareMixin


class RequestSizeMiddleware(MiddlewareMixin):
    """Past DATA_UPLOAD_MAX_MEMORY_SIZE the CSRF check's read of request.POST raises RequestDataTooBig,
    which Django turns into a bare "Bad Request (400)" page that htmx would swap into the thread. This
    answers first, from the same test Django makes (the declared Content-Length), before anything reads
    the body. A MiddlewareMixin, so it runs in the thread hop of Django's own (project/tuning)."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        # Multipart bodies are measured by Django without their files; this app posts none.
        if limit is None or request.method != "POST" or request.content_type == "multipart/form-data":
            return None
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return None  # Django's own parsing answers a malformed header
        if length <= limit:
            return None
        return too_large(request, length)


def too_large_message(length: int) -> str:
    return (
        f"This message is too long to send ({megabytes(length)} as sent); "
        f"the limit is {settings.CHAT_MAX_MESSAGE_CHARS:,} characters. "
        "It is still in the box: shorten it and send it again."
    )


def megabytes(length: int) -> str:
    return f"{length / 1_000_000:.1f} MB"


def too_large(request: HttpRequest, length: int) -> HttpResponse:
    """413, what it is. For htmx, next to the composer (chat.js swaps an error that retargets itself;
    the box keeps its text, and DEBUG's django-htmx error page, which takes over the whole document
    for a 400, leaves a 413 alone); else the message as a plain page."""
    message = too_large_message(length)
    if request.headers.get("HX-Request") != "true":
        return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
    # No request in the context: a context processor could read the session, and nothing else is needed.
    html = render_to_string("chat/conversation.html#page_notice", {"notice": message})
    response = HttpResponse(html, status=413)
    response["HX-Retarget"], response["HX-Reswap"] = "#composer-status", "innerHTML"
    return response
