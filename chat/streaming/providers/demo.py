"""The offline demo model: a markdown-rich reply, paced like a real model, through the same events."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence

from . import Event, Provider, Stop, TextDelta, ThinkingDelta, Turn, Usage, UsageUpdate

THINKING = "The user wants to see what streaming looks like. Show headings, a list, a table and code."

REPLY = """## Hello from the demo model

This reply is generated **offline**, so streamchat works before you configure any provider.
It streams token by token exactly like a real model would, and is stored with its usage.

You asked:

> {question}

### What streamchat does

1. Streams the reply into the page as it is written.
2. Stores every conversation, with tokens, stop reason and cost.
3. Survives bad days: split packets, errors after a `200`, dropped connections.

| Provider | Wire format | Configure with |
|---|---|---|
| OpenAI and compatible | Chat Completions | `OPENAI_API_KEY`, `OPENAI_BASE_URL` |
| Anthropic | Messages | `ANTHROPIC_API_KEY` |

```python
async for event in provider.stream(model=model, messages=history):
    print(event)
```

Set `CHAT_MODELS` to choose which models appear in the picker. Ünïcödé and emoji 🎉 stream fine too.
"""

_PIECES = re.compile(r"\s*\S{1,6}|\s+")


def pieces(text: str) -> list[str]:
    """Split like a tokenizer would, roughly: short runs with their leading whitespace."""
    return _PIECES.findall(text)


class DemoProvider(Provider):
    name = "demo"

    def __init__(self, *, interval: float = 0.03) -> None:
        self.interval = interval

    def stream(
        self, *, model: str, messages: Sequence[Turn], system: str = "", max_tokens: int = 4096
    ) -> AsyncIterator[Event]:
        question = messages[-1].content if messages else ""
        quoted = " ".join(question.split())[:200] or "(nothing)"
        prompt_tokens = sum(len(pieces(turn.content)) for turn in messages) + len(pieces(system))
        return self._events(
            text=pieces(REPLY.format(question=quoted))[:max_tokens], prompt_tokens=prompt_tokens, max_tokens=max_tokens
        )

    async def _events(self, *, text: list[str], prompt_tokens: int, max_tokens: int) -> AsyncIterator[Event]:
        thinking = pieces(THINKING)
        await asyncio.sleep(self.interval * 5)  # a model takes a moment before its first token
        yield UsageUpdate(Usage(input_tokens=prompt_tokens, cache_read_tokens=0, cache_write_tokens=0))
        for piece in thinking:
            yield ThinkingDelta(piece)
            await asyncio.sleep(self.interval / 3)
        for piece in text:
            yield TextDelta(piece)
            await asyncio.sleep(self.interval)
        output_tokens = len(thinking) + len(text)
        yield Stop("end_turn" if len(text) < max_tokens else "max_tokens")
        yield UsageUpdate(
            Usage(input_tokens=prompt_tokens, output_tokens=output_tokens, cache_read_tokens=0, cache_write_tokens=0)
        )
