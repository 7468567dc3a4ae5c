"""The generation: runs one reply from provider events to its finished row, and feeds whoever watches it."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asgiref.sync import SyncToAsync, sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from chat import catalog, fanout, live, pricing
from chat.live import TEXT, THINKING, LiveReply, Shutdown
from chat.models import Message, Prompt, Status, UsageSource
from chat.providers import (
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
    from django.contrib.auth.models import AbstractBaseUser

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
            reply.finish(
                status=status,
                content=content,
                thinking=thinking,
                stop_reason=self.stop_reason,
                usage=usage,
                cost=pricing.priced_cost(provider=reply.provider, model=reply.model, usage=usage),
                error=error,
                ttft_ms=None if self.first_token_at is None else round((self.first_token_at - self.started) * 1000),
                duration_ms=round((now - self.started) * 1000),
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


def live_ids() -> list[int]:
    return list(live.owned)


# A stream that claimed its reply holds it watched until its response starts reading it, or for this long
# should the response never be read (the browser gone before the first byte, an error response instead).
HOLD_SECONDS = 10.0


@dataclass(frozen=True)
class Opened:
    """What a stream request found: its reply, and what its response should watch."""

    reply: Message
    live: LiveReply | None = None  # None: the reply is finished (read the row), or this worker is shutting down


async def open_reply(
    message_id: int, *, user: Callable[[], AbstractBaseUser | None], lookup: Callable[[], Message]
) -> Opened | None:
    """Claim the reply if it is queued and start it, or else look it up, with one thread hop for all of it,
    which gives back the request's database connection if the reply is live. `user` is the request's
    session and user (None if nobody is logged in); `lookup` finds the user's reply (Http404 if it is not
    theirs) when it was not claimed here.

    Each hop, and each query in it, waits its turn behind a busy event loop before the upstream request
    can start (measured in the README: about 1 ms a query at C=100), so they are as few as can be: a fresh
    reply takes the user's query and the claim's (Message.claim_for). The claim is a conditional UPDATE:
    of two concurrent requests exactly one starts the upstream call, and the other joins it here, or
    follows it from another process.
    """
    hub = await fanout.hub()
    # No await from this check to registering the claim, so of two requests here only one claims.
    claiming = not Shutdown.requested and live.here(message_id) is None and message_id not in live.claiming
    claim: asyncio.Future[None] | None = None
    started = None
    try:
        if claiming:
            claim = live.claiming[message_id] = asyncio.get_running_loop().create_future()
            # In the reply's group before the row says `streaming`: a follower in another process that reads
            # the row from then on asks the group, and its `watch` waits here until the claim is decided.
            await hub.join(message_id)
        reply, prompt = await sync_to_async(_look_up_and_claim)(message_id, user, lookup, claim=claiming)
        if reply is not None and prompt is not None:
            started = live.owned[reply.pk] = Generation(reply, hub, prompt)
            started.hold(HOLD_SECONDS)
            # Its own context, not a copy of this request's: its few database calls then share one
            # thread and one connection for the process instead of holding this request's for minutes.
            started.task = asyncio.create_task(started.run(), name=f"reply-{reply.pk}", context=contextvars.Context())
    finally:
        if claim is not None:
            del live.claiming[message_id]
            claim.set_result(None)
            if started is None:
                await hub.leave(message_id)
    if reply is None:
        return None
    if started is not None:
        return Opened(reply, started)
    return Opened(reply, await _join(reply, hub))


def _look_up_and_claim(
    message_id: int,
    user_of: Callable[[], AbstractBaseUser | None],
    lookup: Callable[[], Message],
    *,
    claim: bool,
) -> tuple[Message | None, Prompt | None]:
    if (user := user_of()) is None:
        return None, None
    if claim and (claimed := Message.claim_for(user, message_id)) is not None:
        reply, prompt = claimed
    else:
        # Not claimed: already streaming or finished, another request's, or not this user's (Http404).
        reply, prompt = lookup(), None
        if reply.is_finished:
            return reply, None  # answered at once: the request's end gives back its connection
    # The stream now only waits for parts, for minutes. Measured (bench/RESULTS.md): with a connection
    # held per open stream, PostgreSQL's default 100 ran out at C=100.
    close_old_connections()
    return reply, prompt


async def _join(reply: Message, hub: fanout.Hub) -> LiveReply | None:
    """What to watch for a reply this request did not claim: written here, or followed from elsewhere."""
    if (claim := live.claiming.get(reply.pk)) is not None:
        # Another request here is claiming it, and the row may already say `streaming`: wait for that
        # claim rather than race it. Shielded: this request may leave, the claim may not.
        await asyncio.shield(claim)
    if (local := live.here(reply.pk)) is not None:
        return local
    if reply.status == Status.QUEUED:  # claimed meanwhile, here or elsewhere, or this worker is shutting down
        reply = await Message.objects.aget(pk=reply.pk)
        if (local := live.here(reply.pk)) is not None:
            return local
    if reply.status != Status.STREAMING:
        return None
    mirror = fanout.Mirror(reply, hub)
    mirror.start()
    return mirror


async def request_stop(reply: Message) -> None:
    """Stop pressed: cancel the generation wherever it runs, or close a reply that never started."""
    if (generation := live.owned.get(reply.pk)) is not None:
        generation.stop(STOPPED_BY_USER)
    elif reply.status == Status.QUEUED:
        await reply.afinish(status=Status.CANCELLED, content="")
    else:
        fanout.request_remote_stop(await fanout.hub(), reply.pk)


async def drain(*, grace: float) -> None:
    """Shutdown: claim nothing new, let running replies finish for `grace` seconds, then interrupt
    the rest; their rows are closed as interrupted with their text."""
    Shutdown.requested = True
    deadline = time.monotonic() + grace
    while live.owned and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    generations = [g for g in live.owned.values() if isinstance(g, Generation)]
    for generation in generations:
        generation.stop(SHUTTING_DOWN)
    await asyncio.gather(*(g.task for g in generations if g.task), return_exceptions=True)


def give_back_request_thread() -> None:
    """The request's sync work is done until its end (its request_finished signal leases a thread again):
    give its thread back to the pool (project/threads.py) for other requests. Call it between hops only:
    a stream's response calls it when it starts, after the last middleware's hop.

    Measured (bench/RESULTS.md): with a thread held per open stream, 200 open streams kept 205 threads (28 without).
    """
    # asgiref (pinned) keeps each context's executor in a class-level map; project.asgi's is a RequestExecutor.
    context = SyncToAsync.thread_sensitive_context.get(None)
    executor = SyncToAsync.context_to_thread_executor.get(context) if context is not None else None
    if (release := getattr(executor, "release", None)) is not None:
        release()


# ----- checkpoints ---------------------------------------------------------------------------------

_checkpointers: dict[asyncio.AbstractEventLoop, tuple[asyncio.Event, asyncio.Task[None]]] = {}


def checkpointer() -> asyncio.Event:
    """This loop's checkpointer, started on first use; set the event when a reply is due."""
    loop = asyncio.get_running_loop()
    running = _checkpointers.get(loop)
    if running is None or running[1].done():
        wanted = asyncio.Event()
        # Outside any request's context, like the generations, so it shares their thread and connection.
        task = loop.create_task(
            checkpoint_forever(wanted), name="streamchat-checkpoints", context=contextvars.Context()
        )
        running = _checkpointers[loop] = (wanted, task)
    return running[0]


async def checkpoint_forever(wanted: asyncio.Event) -> None:
    """Save the text of every reply that is due (CHAT_CHECKPOINT_SECONDS after its last checkpoint) in one
    UPDATE: one statement and one thread hop for all of them, however many replies stream."""
    every = settings.CHAT_CHECKPOINT_SECONDS
    while True:
        await wanted.wait()
        wanted.clear()
        now = time.monotonic()
        due = [
            g
            for g in list(live.owned.values())
            if isinstance(g, Generation) and g.version > g.saved_version and now >= g.checkpoint_due
        ]
        if due:
            versions = [g.version for g in due]
            rows = [(g.reply.pk, g.text(TEXT), g.text(THINKING)) for g in due]
            try:
                await sync_to_async(Message.checkpoint_many)(rows)
            except DatabaseError:
                logger.exception("checkpoint of %d replies failed; will try again", len(rows))
                await forget_connection()
            else:
                for generation, version in zip(due, versions, strict=True):
                    generation.saved_version = version
            now = time.monotonic()
            for generation in due:
                generation.checkpoint_due = now + every
        # Replies falling due meanwhile go together into the next statement: at most four a period.
        await asyncio.sleep(every / 4)


async def forget_connection() -> None:
    """After a database error, drop this thread's connection so the next call opens a fresh one."""
    try:
        await sync_to_async(connection.close)()
    except DatabaseError:
        logger.warning("could not close a broken database connection", exc_info=True)
