"""The pages beside a conversation: the sidebar's search, a conversation's export, and the user's usage."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET

from chat import export, search
from chat.costs.usage import usage_of
from chat.views import PAGE, new_chat_form, page_context, users_conversation


@login_required
@require_GET
def usage_page(request: HttpRequest) -> HttpResponse:
    """The user's own spend: this month and last, by day and by model, and what is left of the budget."""
    return render(request, "chat/usage.html", {"usage": usage_of(request.user, month=request.GET.get("month"))})


@login_required
@require_GET
def search_conversations(request: HttpRequest) -> HttpResponse:
    """The sidebar's search: for htmx, the results to put over the list; without JavaScript, the first page
    with them in the sidebar."""
    found = search.find(request.user, request.GET.get("q", ""))
    if request.htmx:
        return render(request, f"{PAGE}#search_results", {"found": found})
    form = new_chat_form(request)
    return render(request, "chat/index.html", page_context(request, form=form, found=found))


def exported(request: HttpRequest, conversation_id: int, extension: str, content_type: str) -> HttpResponse:
    """The user's conversation and its shown messages as a download (hidden ones left out, as on the page)."""
    conversation = users_conversation(request, conversation_id)
    build = export.as_markdown if extension == "md" else export.as_json
    response = HttpResponse(build(conversation, list(conversation.messages.shown())), content_type=content_type)
    response["Content-Disposition"] = content_disposition_header(True, export.filename(conversation, extension))
    return response


@login_required
@require_GET
def export_markdown(request: HttpRequest, conversation_id: int) -> HttpResponse:
    return exported(request, conversation_id, "md", "text/markdown; charset=utf-8")


@login_required
@require_GET
def export_json(request: HttpRequest, conversation_id: int) -> HttpResponse:
    return exported(request, conversation_id, "json", "application/json; charset=utf-8")
