"""The generation: runs one reply from provider events to its finished row, and feeds whoever watches it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.conf import settings

from chat.costs import pricing
from chat.models import Message, Prompt, Status, UsageSource
from chat.models.message import INTERRUPTED
from chat.streaming import catalog, fanout, live
from chat.streaming.checkpoints import checkpointer, forget_connection
from chat.streaming.live import TEXT, THINKING, LiveReply, Shutdown
from chat.streaming.providers import (
    Event,
    Provider,
    ProviderError,
    Stop,
    StreamError,
    TextDelta,
    ThinkingDelta,
    Usage,
    UsageUpdate,
)

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

STOPPED_BY_USER = "stopped"
NOBODY_WATCHING = "unwatched"
SHUTTING_DOWN = "shutdown"


class Generation(LiveReply):
    """One reply being written, owned by the process that claimed it, not by any one response.

    Watchers in this process read its parts directly; other processes follow it through
    `fanout` (Subscribers). When nobody has watched it for CHAT_UNWATCHED_TIMEOUT seconds
    (0: the moment the last watcher leaves) the upstream request is cancelled.
    """

    def __init__(self, reply: Message, hub: fanout.Hub, prompt: Prompt) -> None:
        super().__init__(reply)
        self.hub = hub
        # Held only until the first token, after which no retry can use it: a long conversation then
        # lives once per open stream, as the request body (providers.http.request_body), not twice.
        self.prompt: Prompt | None = prompt
        turns, system = prompt
        self.prompt_chars = sum(len(turn.content) for turn in turns) + len(system)
        self.remote = fanout.Subscribers()
        self.task: asyncio.Task[None] | None = None
        self.running = False
        self.stop_reason_requested = ""
        self.usage: Usage | None = None
        self.stop_reason = ""
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        # When the model started thinking, and when it started writing after that ("Thought for N s").
        self.thinking_from: float | None = None
        self.thinking_until: float | None = None
        self.saved_version = 0  # parts already in the row's last checkpoint
        self.checkpoint_due = float("inf")
        self._flush_timer: asyncio.TimerHandle | None = None
        self._unwatched_timer: asyncio.TimerHandle | None = None

    def stop(self, reason: str) -> None:
        """Cancel the upstream request now; the reply is stored with what it has."""
        if self.task and not self.task.done() and not self.stop_reason_requested:
            self.stop_reason_requested = reason
            # A task cancelled before its first step never runs a line of run(), and its row would stay
            # `streaming`: run() checks the reason when it starts instead.
            if self.running:
                self.task.cancel()

    def _publish(self, kind: int, text: str) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            self.prompt = None
        if kind == THINKING and self.thinking_from is None:
            self.thinking_from = time.monotonic()
        elif kind == TEXT and self.thinking_from is not None and self.thinking_until is None:
            self.thinking_until = time.monotonic()
        self.parts.append(text)
        self.kinds.append(kind)
        for waker in self.watchers:
            waker.set()
        if self.remote.positions and self._flush_timer is None:  # attribute, not __bool__: once per token
            # Other processes get a frame's worth of parts in one message, not one per token.
            self._flush_timer = asyncio.get_running_loop().call_later(fanout.FLUSH_SECONDS, self._flush_remote)

    def _flush_remote(self) -> None:
        self._flush_timer = None
        self.remote.flush(self.hub, self)
        if not self.remote:
            self.watchers_changed()

    def on_remote(self, message: dict) -> None:
        kind = message["type"]
        if kind == "watch":
            self.remote.add(message["channel"], int(message["start"]))
            self.remote.flush(self.hub, self, force=True)  # the answer tells the follower we are alive
        elif kind == "unwatch":
            self.remote.remove(message["channel"])
        elif kind == "stop":
            self.stop(STOPPED_BY_USER)
        self.watchers_changed()

    def watchers_changed(self) -> None:
        if self.finished or Shutdown.requested:
            return
        self.remote.expire()
        if self.watchers or self.remote:
            if self._unwatched_timer:
                self._unwatched_timer.cancel()
                self._unwatched_timer = None
            return
        timeout = settings.CHAT_UNWATCHED_TIMEOUT
        if timeout <= 0:
            self.stop(NOBODY_WATCHING)
        elif self._unwatched_timer is None:
            self._unwatched_timer = asyncio.get_running_loop().call_later(timeout, self._unwatched_for_too_long)

    def _unwatched_for_too_long(self) -> None:
        self._unwatched_timer = None
        self.remote.expire()
        if not self.watchers and not self.remote:
            self.stop(NOBODY_WATCHING)

    def _announce(self, notice: str) -> None:
        self.notice = notice
        self.wake()
        if self.remote:
            self.remote.flush(self.hub, self)

    async def run(self) -> None:
        self.running = True
        status, error = Status.COMPLETED, ""
        try:
            if self.stop_reason_requested:  # stopped before it started: its only watcher left at once
                raise asyncio.CancelledError
            async with asyncio.timeout(settings.CHAT_MAX_DURATION):
                await self._generate()
        except ProviderError as exc:
            status, error = Status.FAILED, exc.message
        except TimeoutError:
            status = Status.FAILED
            error = f"The reply took longer than {settings.CHAT_MAX_DURATION:g} seconds and was stopped (timeout)."
        except asyncio.CancelledError:
            # Stop, a browser that left, or the worker shutting down: all close the upstream request
            # (the cancellation unwound it) and keep what was written.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            status = Status.INTERRUPTED if self.stop_reason_requested == SHUTTING_DOWN else Status.CANCELLED
            if status == Status.INTERRUPTED:
                # The sweep's words for a worker that died: the reader sees why the reply ends there either way.
                error = INTERRUPTED
        except Exception:
            logger.exception("reply %s failed unexpectedly", self.reply.pk)
            status, error = Status.FAILED, "Something went wrong on our side while writing this reply."
        # Shielded: a second cancellation (a worker shutting down) must not lose the final write.
        await asyncio.shield(self._finish(status=status, error=error))

    async def _generate(self) -> None:
        provider = catalog.provider_named(self.reply.provider)
        for attempt in range(settings.CHAT_MAX_RETRIES + 1):
            try:
                # No local here names the prompt: this frame is suspended for the whole reply.
                await self._consume(self._request(provider))
                return
            except ProviderError as exc:
                # Retrying after the first token would show the user a second, different reply.
                if not exc.retryable or self.parts or attempt == settings.CHAT_MAX_RETRIES:
                    raise
                delay = backoff_delay(attempt, exc.retry_after)
                self._announce(f"{exc.message} Retrying in {delay:.0f} s…")
                await asyncio.sleep(delay)
                self._announce("")

    def _request(self, provider: Provider) -> AsyncIterator[Event]:
        assert self.prompt is not None, "a retry after the first token"
        turns, system = self.prompt
        return provider.stream(
            model=self.reply.model, messages=turns, system=system, max_tokens=settings.CHAT_MAX_TOKENS
        )

    async def _consume(self, events: AsyncIterator[Event]) -> None:
        # Partial text is saved about once a second, but by this process's checkpointer, which writes
        # every reply that is due in one statement: nothing here touches the database or leaves this thread.
        wanted = checkpointer()
        every = settings.CHAT_CHECKPOINT_SECONDS
        self.checkpoint_due = time.monotonic() + every
        async with aclosing(events):
            async for event in events:
                kind = type(event)
                if kind is TextDelta:
                    self._publish(TEXT, event.text)  # type: ignore[union-attr]
                elif kind is ThinkingDelta:
                    self._publish(THINKING, event.text)  # type: ignore[union-attr]
                elif kind is UsageUpdate:
                    self.usage = event.usage  # type: ignore[union-attr]
                elif kind is Stop:
                    self.stop_reason = event.reason  # type: ignore[union-attr]
                elif kind is StreamError:
                    raise ProviderError(event.message, retryable=event.retryable)  # type: ignore[union-attr]
                if time.monotonic() >= self.checkpoint_due:
                    wanted.set()

    async def _finish(self, *, status: Status, error: str) -> None:
        content, thinking = self.text(TEXT), self.text(THINKING)
        usage = self.final_usage(content=content, thinking=thinking)
        now = time.monotonic()
        reply = self.reply

        def store() -> None:  # the price and the row in one thread hop
            priced = pricing.price_reply(provider=reply.provider, model=reply.model, usage=usage)
            reply.finish(
                status=status,
                content=content,
                thinking=thinking,
                stop_reason=self.stop_reason,
                usage=usage,
                cost=priced.cost,
                computed_cost=priced.computed_cost,
                cost_source=priced.source,
                error=error,
                ttft_ms=None if self.first_token_at is None else round((self.first_token_at - self.started) * 1000),
                duration_ms=round((now - self.started) * 1000),
                thinking_ms=None
                if self.thinking_from is None
                else round(((self.thinking_until or now) - self.thinking_from) * 1000),
            )

        try:
            await sync_to_async(store)()
        except Exception:
            # The row stays `streaming` and the sweep will close it as interrupted with its checkpoint.
            logger.exception("could not store the end of reply %s", self.reply.pk)
            await forget_connection()
        finally:
            self.finished = True
            live.owned.pop(self.reply.pk, None)
            for timer in (self._flush_timer, self._unwatched_timer):
                if timer:
                    timer.cancel()
            self.release_hold()
            self.remote.finished(self.hub, self)
            self.wake()
            await self.hub.leave(self.reply.pk)

    def final_usage(self, *, content: str, thinking: str) -> Usage:
        reported = self.usage or Usage(source=UsageSource.UNKNOWN)
        if reported.output_tokens is not None:
            return reported
        if not content and not thinking:
            # Nothing was generated (a refused or failed request): keep only what the provider said.
            return reported if reported.input_tokens is not None else Usage(source=UsageSource.UNKNOWN)
        # Text was generated (and billed) but the provider never sent its count, e.g. after Stop.
        return Usage(
            input_tokens=reported.input_tokens
            if reported.input_tokens is not None
            else pricing.estimate_tokens(chars=self.prompt_chars),
            output_tokens=pricing.estimate_tokens(chars=len(content) + len(thinking)),
            cache_read_tokens=reported.cache_read_tokens,
            cache_write_tokens=reported.cache_write_tokens,
            source=UsageSource.ESTIMATED,
        )


def backoff_delay(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff, or the provider's own retry-after, never longer than the configured cap."""
    wanted = retry_after if retry_after is not None else settings.CHAT_RETRY_BASE_DELAY * (2**attempt)
    return min(max(wanted, 0.0), settings.CHAT_RETRY_MAX_DELAY)
