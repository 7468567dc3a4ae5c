"""The app's models, one module per job; everything the rest of the app uses is importable from here."""

from chat.models.choices import FINISHED, WITHOUT_COST, Role, Status, UsageSource
from chat.models.conversation import (
    CONTINUE_PROMPT,
    Conversation,
    ConversationQuerySet,
    NotTheLatestReply,
    ReplyInProgress,
    title_from,
)
from chat.models.groups import GroupPolicy
from chat.models.message import Message, MessageQuerySet
from chat.models.prices import ModelPrice, SpendingLimit
from chat.models.prompts import Prompt, latest_answers, prompt_from, turns_from

__all__ = [
    "CONTINUE_PROMPT",
    "FINISHED",
    "WITHOUT_COST",
    "Conversation",
    "ConversationQuerySet",
    "GroupPolicy",
    "Message",
    "MessageQuerySet",
    "ModelPrice",
    "NotTheLatestReply",
    "Prompt",
    "ReplyInProgress",
    "Role",
    "SpendingLimit",
    "Status",
    "UsageSource",
    "latest_answers",
    "prompt_from",
    "title_from",
    "turns_from",
]
