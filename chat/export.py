"""A conversation as a file to keep: JSON for programs, Markdown for people. Pure functions of the rows given."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.utils.text import slugify

from chat.models import Conversation, Message, Role
from chat.templatetags.chat_tags import model_label, usd

FORMAT = "streamchat.conversation/1"
MAX_FILENAME_CHARS = 80


def filename(conversation: Conversation, extension: str) -> str:
    """A safe file name from the title (ASCII, no path), or conversation-<id> when the title gives none."""
    stem = slugify(conversation.title)[:MAX_FILENAME_CHARS].strip("-") or f"conversation-{conversation.pk}"
    return f"{stem}.{extension}"


def utc(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def exact(cost: Decimal | None) -> str | None:
    # Fixed-point, never "1E-7": every digit stored, without the zeros the column's scale pads it with
    # (0.000123456700 is 0.0001234567), and "0" for a free reply.
    if cost is None:
        return None
    return format(cost.normalize(), "f") if cost else "0"


def message_record(message: Message) -> dict[str, Any]:
    record: dict[str, Any] = {"role": message.role, "text": message.content}
    if message.role == Role.ASSISTANT:
        record |= {
            "model": message.model_id,
            "input_tokens": message.input_tokens,
            "output_tokens": message.output_tokens,
            **{
                name: getattr(message, name)
                for name in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
                if getattr(message, name) is not None
            },
            "usage_source": message.usage_source,
            "cost_usd": exact(message.cost),
            "stop_reason": message.stop_reason,
            "error": message.error,
        }
    record |= {
        "status": message.status,
        "created_at": utc(message.created_at),
        "finished_at": utc(message.finished_at),
        "ttft_ms": message.ttft_ms,
        "duration_ms": message.duration_ms,
    }
    return record


def as_json(conversation: Conversation, messages: Sequence[Message]) -> str:
    document = {
        "format": FORMAT,
        "conversation": {
            "id": conversation.pk,
            "title": str(conversation),
            "model": conversation.model,
            "system_prompt": conversation.system_prompt,
            "created_at": utc(conversation.created_at),
        },
        "messages": [message_record(message) for message in messages],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def as_markdown(conversation: Conversation, messages: Sequence[Message]) -> str:
    lines = [
        f"# {conversation}",
        "",
        f"- Model: {model_label(conversation.model)} (`{conversation.model}`)",
        f"- Created: {utc(conversation.created_at)}",
        f"- Exported from streamchat ({FORMAT})",
        "",
    ]
    if conversation.system_prompt:
        lines += ["## System prompt", "", conversation.system_prompt, ""]
    for number, message in enumerate(messages, start=1):
        if message.role == Role.USER:
            lines += [f"## {number}. You", "", f"*{utc(message.created_at)}*", ""]
        else:
            lines += [f"## {number}. {model_label(message.model_id)}", "", f"*{reply_meta(message)}*", ""]
        lines += [message.content or "*(no text)*", ""]
        if message.error:
            lines += [f"> {message.error}", ""]
    return "\n".join(lines)


def reply_meta(message: Message) -> str:
    """One line under a reply's heading: when, tokens, cost, timing, and how it ended."""
    tokens = f"{_count(message.input_tokens)} in · {_count(message.output_tokens)} out"
    extras = [
        f"{_count(value)} {label}"
        for value, label in (
            (message.cache_read_tokens, "cache read"),
            (message.cache_write_tokens, "cache write"),
            (message.reasoning_tokens, "reasoning"),
        )
        if value is not None
    ]
    when = utc(message.created_at) or ""
    if message.finished_at:
        when += f" → {utc(message.finished_at)}"
    parts = [
        when,
        tokens
        + (f" ({', '.join(extras)})" if extras else "")
        + (" estimated" if message.usage_source == "estimated" else ""),
        usd(message.cost),
    ]
    if message.ttft_ms is not None:
        parts.append(f"first token {message.ttft_ms:,} ms")
    if message.duration_ms is not None:
        parts.append(f"took {message.duration_ms:,} ms")
    parts.append(message.status + (f" ({message.stop_reason})" if message.stop_reason else ""))
    return " · ".join(parts)


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"
