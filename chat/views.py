"""Thin views: validate, call one thing, respond."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import aget_object_or_404, get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from chat import catalog, relay, sse, streaming
from chat.forms import MessageForm
from chat.models import Conversation, Message


def composer_form(conversation: Conversation) -> MessageForm:
    return MessageForm(initial={"model": conversation.model, "request_key": uuid.uuid4().hex})


@login_required
def index(request: HttpRequest) -> HttpResponse:
    conversations = Conversation.objects.for_user(request.user)
    return render(
        request,
        "chat/index.html",
        {"conversations": conversations, "models": catalog.offered_models(), "default_model": catalog.default_model()},
    )


@login_required
@require_POST
def new_conversation(request: HttpRequest) -> HttpResponse:
    model = request.POST.get("model") or catalog.default_model()
    if not catalog.is_offered(model):
        return HttpResponse("That model is not available here.", status=400)
    conversation = Conversation.objects.create(user=request.user, model=model)
    return redirect("chat:conversation", conversation_id=conversation.pk)


@login_required
def conversation_page(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = get_object_or_404(Conversation.objects.for_user(request.user), pk=conversation_id)
    return render(
        request,
        "chat/conversation.html",
        {
            "conversation": conversation,
            "chat_messages": conversation.messages.all(),
            "form": composer_form(conversation),
            "models": catalog.offered_models(),
        },
    )


@login_required
@require_POST
def send_message(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = get_object_or_404(Conversation.objects.for_user(request.user), pk=conversation_id)
    form = MessageForm(request.POST)
    if not form.is_valid():
        context = {"conversation": conversation, "form": form, "models": catalog.offered_models()}
        return render(request, "chat/conversation.html#composer", context, status=400)
    data = form.cleaned_data
    reply = conversation.ask(text=data["text"], model=data["model"] or None, request_key=data["request_key"])
    if not request.htmx:
        return redirect("chat:conversation", conversation_id=conversation.pk)
    context = {"conversation": conversation, "text": data["text"], "reply": reply, "form": composer_form(conversation)}
    return render(request, "chat/conversation.html#exchange", context)


@require_GET
async def stream_reply(request: HttpRequest, message_id: int) -> HttpResponse | StreamingHttpResponse:
    user = await request.auser()
    if not user.is_authenticated:
        # An EventSource cannot follow a login redirect; a 401 makes it stop and the page can say why.
        return HttpResponse("Your session has expired; log in again.", status=401)
    reply = await aget_object_or_404(Message.objects.for_user(user).replies(), pk=message_id)
    return sse.response(relay.reply_events(reply, last_event_id=request.headers.get("Last-Event-ID")))


@login_required
@require_POST
async def stop_reply(request: HttpRequest, message_id: int) -> HttpResponse:
    user = await request.auser()
    reply = await aget_object_or_404(Message.objects.for_user(user).replies(), pk=message_id)
    await streaming.request_stop(reply)
    # The reply's own stream delivers the stopped bubble; nothing to swap here.
    return HttpResponse(status=204)


@require_POST
def demo_login(request: HttpRequest) -> HttpResponse:
    """DEBUG only: one click into a local demo account, so a fresh checkout needs no manual setup."""
    if not settings.DEBUG:
        raise Http404
    user, created = get_user_model().objects.get_or_create(username=settings.CHAT_DEMO_USER)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return redirect("chat:index")
