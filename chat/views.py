"""Thin views: validate, call one thing, respond. An htmx request gets the partial it swaps in."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import aget_object_or_404, get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from chat.costs import limits
from chat.forms import MessageForm, NewConversationForm, RenameForm, SettingsForm
from chat.models import Conversation, Message, NotTheLatestReply, ReplyInProgress, Role
from chat.sidebar import BadPosition, Sidebar
from chat.streaming import admission, catalog, control, relay, sse

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

PAGE = "chat/conversation.html"


def model_access(request: HttpRequest) -> catalog.ModelAccess:
    """The user's model permissions, read once per request (the picker, the form and the check share them)."""
    if not hasattr(request, "chat_model_access"):
        request.chat_model_access = catalog.access_for(request.user)  # type: ignore[attr-defined]
    return request.chat_model_access  # type: ignore[attr-defined]


def composer_form(request: HttpRequest, conversation: Conversation) -> MessageForm:
    access = model_access(request)
    # A model the user may no longer use is not preselected: the picker starts on the first allowed one.
    model = conversation.model if access.allows(conversation.model) else access.default()
    return MessageForm(initial={"model": model, "request_key": uuid.uuid4().hex}, access=access)


def page_context(request: HttpRequest, conversation: Conversation | None = None, **extra: Any) -> dict[str, Any]:
    """What every chat page shows around the conversation: the sidebar and the model picker (the user's models)."""
    access = model_access(request)
    models = access.models()
    return {
        "sidebar": Sidebar(request.user),
        "conversation": conversation,
        "models": models,
        "default_model": access.default(),
        "no_model": "" if models else f"No model is available to you: {access.none_available()}",
        **extra,
    }


def new_chat_form(request: HttpRequest) -> NewConversationForm:
    """The first page's composer, on the user's default model."""
    access = model_access(request)
    return NewConversationForm(initial={"model": access.default()}, access=access)


def model_refused(request: HttpRequest, model: str) -> str | None:
    """Why the user may not start a reply with this model now (their groups' lists), or None. Only the groups'
    lists: a conversation's model that CHAT_MODELS no longer offers is still answered, as before groups."""
    access = model_access(request)
    return None if access.refused_by(model) is None else access.why_not(model)


def conversation_context(request: HttpRequest, conversation: Conversation, form: MessageForm | None = None) -> dict:
    chat_messages = list(conversation.messages.shown())
    return page_context(
        request,
        conversation,
        chat_messages=chat_messages,
        newest=chat_messages[-1] if chat_messages else None,
        busy=bool(chat_messages) and not chat_messages[-1].is_finished,
        form=form or composer_form(request, conversation),
    )


def exchange(
    request: HttpRequest,
    conversation: Conversation,
    reply: Message,
    *,
    form: MessageForm | None,
    spend: limits.Spend | None = None,
    hidden: list[int] | None = None,
) -> HttpResponse:
    """A question and its new reply, for an htmx request that added them (and took `hidden` off the page)."""
    context = page_context(
        request, conversation, question=reply.question, reply=reply, form=form, spend=spend, hidden=hidden or []
    )
    return render(request, f"{PAGE}#exchange", context)


def users_conversation(request: HttpRequest, conversation_id: int) -> Conversation:
    return get_object_or_404(Conversation.objects.for_user(request.user), pk=conversation_id)


def users_reply(request: HttpRequest, message_id: int) -> Message:
    return get_object_or_404(
        Message.objects.for_user(request.user).replies().select_related("conversation"), pk=message_id
    )


def showing(request: HttpRequest, conversation: Conversation) -> bool:
    """Whether the page that sent this htmx request is this conversation's page."""
    return request.htmx.current_url_abs_path == reverse("chat:conversation", args=[conversation.pk])


def page_notice(request: HttpRequest, conversation: Conversation, message: str, *, status: int) -> HttpResponse:
    """An answer to an action in a reply's bubble that did nothing: said next to the composer (whose
    typed text stays), or on the whole page without JavaScript."""
    if not request.htmx:
        return redirect("chat:conversation", conversation_id=conversation.pk)
    response = render(request, f"{PAGE}#page_notice", {"notice": message}, status=status)
    response["HX-Retarget"], response["HX-Reswap"] = "#composer-status", "innerHTML"
    return response


def refused(
    request: HttpRequest, refusal: limits.Refusal, conversation: Conversation, form: MessageForm | None = None
) -> HttpResponse:
    """Refused before anything is stored or sent upstream; a form comes back with its text."""
    if form is None and request.htmx:
        response = page_notice(request, conversation, refusal.message, status=refusal.status)
    else:
        form = form or composer_form(request, conversation)
        form.add_error(None, refusal.message)
        response = with_composer(request, conversation, form, status=refusal.status)
    response["Retry-After"] = str(refusal.retry_after)
    return response


def with_composer(request: HttpRequest, conversation: Conversation, form: MessageForm, *, status: int) -> HttpResponse:
    """The composer with its errors and the text as typed: in place for htmx, else on the whole page."""
    if not request.htmx:
        return render(request, PAGE, conversation_context(request, conversation, form), status=status)
    response = render(request, f"{PAGE}#composer", page_context(request, conversation, form=form), status=status)
    response["HX-Retarget"], response["HX-Reswap"] = "#composer", "outerHTML"
    return response


@login_required
def index(request: HttpRequest) -> HttpResponse:
    """The start page; with ?before=, the sidebar's next page of older conversations."""
    form = new_chat_form(request)
    context = page_context(request, form=form)
    if before := request.GET.get("before"):
        try:
            context["sidebar"] = Sidebar(request.user, before=before)
        except BadPosition:
            return HttpResponse("Not a position in the list of conversations.", status=400)
        if request.htmx:
            return render(request, f"{PAGE}#sidebar_items", context)
    return render(request, "chat/index.html", context)


@admission.refuse_when_busy
@login_required
@require_POST
def new_conversation(request: HttpRequest) -> HttpResponse:
    """New chat, or the first page's composer: with text, the conversation starts with that question."""
    form = NewConversationForm(request.POST, access=model_access(request))
    if not form.is_valid():
        return render(request, "chat/index.html", page_context(request, form=form), status=400)
    text, model = form.cleaned_data["text"], form.cleaned_data["model"] or model_access(request).default()
    if text and (why := model_refused(request, model)):
        form.add_error("model", why)
        return render(request, "chat/index.html", page_context(request, form=form), status=400)
    if text and (refusal := limits.refusal(request.user)):
        form.add_error(None, refusal.message)
        response = render(request, "chat/index.html", page_context(request, form=form), status=refusal.status)
        response["Retry-After"] = str(refusal.retry_after)
        return response
    if text:
        key = form.cleaned_data["request_key"]
        reply = Conversation.objects.start_with(user=request.user, model=model, text=text, request_key=key)
        return redirect("chat:conversation", conversation_id=reply.conversation_id)
    conversation = Conversation.objects.start(user=request.user, model=model)
    return redirect("chat:conversation", conversation_id=conversation.pk)


@login_required
def conversation_page(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = users_conversation(request, conversation_id)
    return render(request, PAGE, conversation_context(request, conversation))


@login_required
@require_GET
def conversation_updates(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """Polled by every open tab: messages another tab (or device) added since the newest one shown."""
    conversation = users_conversation(request, conversation_id)
    after = int(request.GET["after"]) if request.GET.get("after", "").isdigit() else 0
    new = list(conversation.messages.shown().filter(pk__gt=after))
    return render(request, f"{PAGE}#updates_response", {"conversation": conversation, "new_messages": new})


@admission.refuse_when_busy
@login_required
@require_POST
def send_message(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = users_conversation(request, conversation_id)
    form = MessageForm(request.POST, access=model_access(request))
    if not form.is_valid():
        return with_composer(request, conversation, form, status=400)
    if why := model_refused(request, form.cleaned_data["model"] or conversation.model):
        form.add_error("model", why)
        return with_composer(request, conversation, form, status=400)
    standing = limits.check(request.user)
    if standing.refusal:
        return refused(request, standing.refusal, conversation, form)
    data = form.cleaned_data
    reply = conversation.ask(text=data["text"], model=data["model"] or None, request_key=data["request_key"])
    if not request.htmx:
        return redirect("chat:conversation", conversation_id=conversation.pk)
    # The new reply has no cost yet, so the spend just read is still the composer's figure.
    return exchange(request, conversation, reply, form=composer_form(request, conversation), spend=standing.spend)


def another_reply(
    request: HttpRequest,
    message_id: int,
    start: Callable[[Conversation, Message], Message],
    respond: Callable[[Conversation, Message], HttpResponse],
) -> HttpResponse:
    """Start a new reply from one of the user's replies (Retry, Regenerate, Continue), within the limits."""
    reply = users_reply(request, message_id)
    conversation = reply.conversation
    if why := model_refused(request, conversation.model):
        return page_notice(request, conversation, f"{why} Then press the button again.", status=400)
    if refusal := limits.refusal(request.user):
        return refused(request, refusal, conversation)
    try:
        new_reply = start(conversation, reply)
    except NotTheLatestReply as exc:
        return page_notice(request, conversation, str(exc), status=409)
    if not request.htmx:
        return redirect("chat:conversation", conversation_id=conversation.pk)
    return respond(conversation, new_reply)


@admission.refuse_when_busy
@login_required
@require_POST
def regenerate_reply(request: HttpRequest, message_id: int) -> HttpResponse:
    """Retry a failed reply, or Regenerate the latest one: a new reply to the same question."""
    return another_reply(
        request,
        message_id,
        Conversation.regenerate,
        lambda conversation, new_reply: render(request, f"{PAGE}#message", {"message": new_reply}),
    )


@admission.refuse_when_busy
@login_required
@require_POST
def continue_reply(request: HttpRequest, message_id: int) -> HttpResponse:
    """Continue a reply cut off at the token limit."""
    return another_reply(
        request,
        message_id,
        Conversation.continue_after,
        lambda conversation, new_reply: exchange(request, conversation, new_reply, form=None),
    )


@admission.refuse_when_busy
@login_required
@require_POST
def edit_message(request: HttpRequest, message_id: int) -> HttpResponse:
    """Edit one of the user's questions: ask the new text in its place; what followed leaves the page."""
    question = get_object_or_404(
        Message.objects.for_user(request.user).shown().filter(role=Role.USER).select_related("conversation"),
        pk=message_id,
    )
    conversation = question.conversation
    form = MessageForm(request.POST)
    if not form.is_valid():
        message = " ".join(error for errors in form.errors.values() for error in errors)
        return page_notice(request, conversation, f"{message} Your edit was not sent.", status=400)
    if why := model_refused(request, conversation.model):
        return page_notice(request, conversation, f"{why} Then save your edit again.", status=400)
    if refusal := limits.refusal(request.user):
        return refused(request, refusal, conversation)
    try:
        reply, hidden = conversation.edit(question, form.cleaned_data["text"])
    except ReplyInProgress as exc:
        return page_notice(request, conversation, str(exc), status=409)
    if not request.htmx:
        return redirect("chat:conversation", conversation_id=conversation.pk)
    return exchange(request, conversation, reply, form=None, hidden=hidden)


@login_required
@require_POST
def rename_conversation(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = users_conversation(request, conversation_id)
    form = RenameForm(request.POST)
    if form.is_valid():
        conversation.rename(form.cleaned_data["title"])
    if not request.htmx:
        return redirect("chat:conversation", conversation_id=conversation.pk)
    context = page_context(request, conversation, renamed=showing(request, conversation))
    return render(request, f"{PAGE}#sidebar_update", context)


@login_required
@require_POST
def delete_conversation(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = users_conversation(request, conversation_id)
    shown = request.htmx and showing(request, conversation)
    conversation.remove()
    if not request.htmx:
        return redirect("chat:index")
    if shown:
        return HttpResponse(status=204, headers={"HX-Redirect": reverse("chat:index")})
    return render(request, f"{PAGE}#sidebar_update", page_context(request))


@login_required
@require_POST
def conversation_settings(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = users_conversation(request, conversation_id)
    form = SettingsForm(request.POST, access=model_access(request))
    if form.is_valid():
        conversation.configure(**form.changes())
    if not request.htmx:
        return redirect("chat:conversation", conversation_id=conversation.pk)
    context = {"conversation": conversation, "settings_form": form, "saved": form.is_valid()}
    return render(request, f"{PAGE}#settings", context, status=200 if form.is_valid() else 400)


def signed_in_user(request: HttpRequest) -> AbstractBaseUser | None:
    """The request's user, or None if the session has expired (a stream cannot follow a login redirect)."""
    return request.user if request.user.is_authenticated else None


@require_GET
async def stream_reply(request: HttpRequest, message_id: int) -> HttpResponse | StreamingHttpResponse:
    # The session, the user, the reply and its claim in one thread hop (see control.open_reply).
    opened = await control.open_reply(
        message_id, user=lambda: signed_in_user(request), lookup=lambda: users_reply(request, message_id)
    )
    if opened is None:
        # An EventSource cannot follow a login redirect; a 401 makes it stop and the page can say why.
        return HttpResponse("Your session has expired; log in again.", status=401)
    return sse.response(relay.reply_events(opened, last_event_id=request.headers.get("Last-Event-ID")))


@login_required
@require_POST
async def stop_reply(request: HttpRequest, message_id: int) -> HttpResponse:
    # login_required has already loaded the user for this async view: reuse it rather than reload it in a thread.
    user = await request.auser()
    reply = await aget_object_or_404(Message.objects.for_user(user).replies(), pk=message_id)
    await control.request_stop(reply)
    # The reply's own stream delivers the stopped bubble; nothing to swap here.
    return HttpResponse(status=204)


@require_GET
def session_status(request: HttpRequest) -> HttpResponse:
    """Asked by the page when a reply's stream fails: a 401 means the session expired, so say so."""
    return HttpResponse(status=204 if request.user.is_authenticated else 401)


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
