"""A conversation and the state changes that add to it: ask, regenerate, continue, rename, remove."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from chat.models.choices import FINISHED, Role, Status
from chat.models.message import Message

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def for_user(self, user: AbstractBaseUser) -> ConversationQuerySet:
        return self.filter(user=user, deleted_at__isnull=True)

    def without_messages(self) -> ConversationQuerySet:
        return self.filter(messages__isnull=True)

    def start(self, *, user: AbstractBaseUser, model: str) -> Conversation:
        """A conversation to write in: the user's untouched one if there is one, so that pressing
        New chat twice does not leave a trail of empty conversations; else a new one."""
        conversation = self.for_user(user).without_messages().filter(title="").first()
        if conversation is None:
            return self.create(user=user, model=model)
        conversation.configure(model=model)
        return conversation

    def start_with(self, *, user: AbstractBaseUser, model: str, text: str, request_key: str = "") -> Message:
        """A conversation that starts with this question (the untouched one, as `start`), and its queued reply.

        One at a time per user, under a lock on the user's row (SQLite's immediate transactions write one at a
        time anyway): two tabs asking at once would otherwise both take the same untouched conversation and
        ask in it. A double submit of one form (its request_key) gets the reply the first submit made."""
        with transaction.atomic():
            get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk").get()
            if request_key:
                earlier = Message.objects.filter(
                    conversation__user=user, role=Role.ASSISTANT, request_key=request_key
                ).first()
                if earlier is not None:
                    return earlier
            return self.start(user=user, model=model).ask(text=text, request_key=request_key)


class NotTheLatestReply(Exception):
    """Retry, Regenerate and Continue act on the conversation's last message only."""


class ReplyInProgress(Exception):
    """An edit waits until no reply of the conversation is being written."""


# What Continue sends as the user's turn: providers want a user turn before each reply.
CONTINUE_PROMPT = "Continue exactly where you stopped."


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, help_text="provider:model")
    system_prompt = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Beyond the contract: deleting hides a conversation from its user but keeps its replies and their
    # costs for the admin, the reports and the budget.
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    def remove(self) -> None:
        """Delete for the user: hidden from them, kept (with its costs) for the operator."""
        self.deleted_at = timezone.now()
        self.save(update_fields=["deleted_at"])

    def rename(self, title: str) -> None:
        # An empty title falls back to "Conversation N"; renaming does not move it up the list.
        self.title = " ".join(title.split())[:200]
        self.save(update_fields=["title"])

    def configure(self, *, model: str | None = None, system_prompt: str | None = None) -> None:
        """Change the model and/or the system prompt; None leaves a setting as it is."""
        fields = []
        if model is not None and model != self.model:
            self.model = model
            fields.append("model")
        if system_prompt is not None and system_prompt != self.system_prompt:
            self.system_prompt = system_prompt
            fields.append("system_prompt")
        if fields:
            self.save(update_fields=fields)

    def regenerate(self, reply: Message) -> Message:
        """A new queued reply to the same question (Retry after a failure, Regenerate otherwise).

        The earlier reply stays, with its cost; the prompt leaves it out (see `latest_answers`).
        """
        self._check_latest(reply)
        provider, _, model_name = self.model.partition(":")
        with transaction.atomic():
            self.save(update_fields=["updated_at"])
            return Message.objects.create(
                conversation=self, role=Role.ASSISTANT, status=Status.QUEUED, provider=provider, model=model_name
            )

    def continue_after(self, reply: Message) -> Message:
        """Continue a reply cut off at the token limit: a short user turn asking for the rest, and a new reply."""
        self._check_latest(reply)
        if not reply.was_truncated:
            raise NotTheLatestReply("Only a reply cut off at the token limit can be continued.")
        return self.ask(text=CONTINUE_PROMPT)

    def _check_latest(self, reply: Message) -> None:
        latest = self.messages.order_by("-pk").first()
        if latest is None or latest.pk != reply.pk or reply.role != Role.ASSISTANT or not latest.is_finished:
            raise NotTheLatestReply("Only the latest finished reply can be retried, regenerated or continued.")

    def edit(self, question: Message, text: str) -> tuple[Message, list[int]]:
        """Ask `text` in place of `question`: the question and all that followed leave the page and the
        prompt (hidden, kept with their costs, as `remove` keeps a conversation). Returns the new reply and
        the ids of the messages hidden."""
        with transaction.atomic():
            later = self.messages.shown().filter(pk__gte=question.pk)
            if later.filter(role=Role.ASSISTANT).exclude(status__in=FINISHED).exists():
                raise ReplyInProgress("A reply is still being written: press Stop, or wait for it, then edit.")
            hidden = list(later.values_list("pk", flat=True))
            later.update(hidden_at=timezone.now())
            reply = self.ask(text=text)
        return reply, hidden

    def ask(self, *, text: str, model: str | None = None, request_key: str = "") -> Message:
        """Store the user's message and a queued reply in one transaction; a repeated request_key
        (a double submit of the same form) returns the reply the first submit created."""
        fields = ["updated_at"]
        if model and model != self.model:
            self.model = model
            fields.append("model")
        if not self.title:
            self.title = title_from(text)
            fields.append("title")
        provider, _, model_name = self.model.partition(":")
        question = Message(conversation=self, role=Role.USER, content=text, status=Status.COMPLETED)
        reply = Message(
            conversation=self,
            role=Role.ASSISTANT,
            status=Status.QUEUED,
            provider=provider,
            model=model_name,
            request_key=request_key,
        )
        try:
            with transaction.atomic():
                self.save(update_fields=fields)
                Message.objects.bulk_create([question, reply])  # one INSERT, in this order
        except IntegrityError:
            if not request_key:
                raise
            # A double submit: the unique constraint kept the second out, and rolled back its question too.
            return self.messages.get(request_key=request_key, role=Role.ASSISTANT)
        reply.question = question
        return reply


def title_from(text: str) -> str:
    first_line = " ".join(text.split())
    return first_line[:80] + ("…" if len(first_line) > 80 else "")
