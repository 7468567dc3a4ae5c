"""What a reply answers: the turns before it as a provider needs them, and the system prompt."""

from __future__ import annotations

from chat.models.choices import Role
from chat.streaming.providers import Turn

# What a reply answers: the turns before it, and the conversation's system prompt.
Prompt = tuple[list[Turn], str]


def prompt_from(rows: list[tuple[str | None, str | None, str]]) -> Prompt:
    """A Prompt from (role, content, system prompt) rows, oldest first, as both ways of reading it return them;
    a row without a role only carries the system prompt of a conversation with no earlier turns."""
    history = [(role, content) for role, content, _ in rows if role is not None and content is not None]
    return turns_from(latest_answers(history)), rows[0][2]


def latest_answers(history: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The history as the model should see it after Retry or Regenerate: of several replies in a row
    to one question only the last with text counts, and replies after the last question are dropped
    (they are the attempts the reply being written replaces)."""
    kept: list[tuple[str, str]] = []
    for role, content in history:
        if role == Role.ASSISTANT and kept and kept[-1][0] == Role.ASSISTANT:
            if content.strip():
                kept[-1] = (role, content)
            continue
        kept.append((role, content))
    if kept and kept[-1][0] == Role.ASSISTANT:
        kept.pop()
    return kept


def turns_from(history: list[tuple[str, str]]) -> list[Turn]:
    """Providers want alternating turns that start with the user: failed replies leave empty
    assistant turns (dropped) and so two user turns in a row (joined)."""
    turns: list[Turn] = []
    for role, content in history:
        if not content.strip():
            continue
        if turns and turns[-1].role == role:
            turns[-1] = Turn(role=role, content=f"{turns[-1].content}\n\n{content}")
        elif turns or role == Role.USER:
            turns.append(Turn(role=role, content=content))
    return turns
