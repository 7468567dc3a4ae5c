"""Replies across worker processes: a reply's owner and its followers talk over the channel layer.

Each process has one mailbox (a channel). The owner of a reply puts its mailbox in the group
`reply.<id>` while it writes the reply. A process that must show the reply but does not own it
keeps a Mirror: it asks the group to `watch` from part N, the owner answers with every part from
N on (so the mirror's parts, and so the event ids, are exactly the owner's), then sends new parts
at most every FLUSH_SECONDS while the lease lasts, and `finished` at the end. `stop` reaches the
owner wherever the POST landed. With no answer the owner is gone, and the mirror reads checkpoints.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from chat.models import Message
from chat.streaming import live
from chat.streaming.live import TEXT, THINKING, LiveReply

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.03
ANSWER_TIMEOUT = 2.0
POLL_SECONDS = 1.0


def lease_seconds() -> float:
    """How long an owner keeps sending to a follower that has not renewed; it renews at a third of it."""
    return settings.CHAT_FOLLOWER_LEASE


def owner_group(reply_id: int) -> str:
    return f"reply.{reply_id}"


class Hub:
    """This process's mailbox, and one sender so that messages to a channel keep their order."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.channel = ""
        self.outbox: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.channel = await self.layer.new_channel("streamchat.")
        # Their own context, not the first request's: they outlive it, and so do the tasks they start.
        work = (self._receive(), self._send())
        self.tasks = [asyncio.create_task(coroutine, context=contextvars.Context()) for coroutine in work]

    def post(self, *, to: str, message: dict[str, Any], group: bool = False) -> None:
        self.outbox.put_nowait(("group" if group else "channel", to, message))

    async def join(self, reply_id: int) -> None:
        await self.layer.group_add(owner_group(reply_id), self.channel)

    async def leave(self, reply_id: int) -> None:
        await self.layer.group_discard(owner_group(reply_id), self.channel)

    async def _send(self) -> None:
        while True:
            kind, to, message = await self.outbox.get()
            try:
                if kind == "group":
                    await self.layer.group_send(to, message)
                else:
                    await self.layer.send(to, message)
            except Exception:  # a full or unreachable layer drops one message, never the sender
                logger.exception("channel layer send to %s failed", to)

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("channel layer receive failed; retrying")
                await asyncio.sleep(1)
                continue
            try:
                dispatch(message)
            except Exception:
                logger.exception("could not handle %s", message.get("type"))


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}
_starting: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}


async def hub() -> Hub:
    loop = asyncio.get_running_loop()
    if (existing := _hubs.get(loop)) is not None:
        return existing
    async with _starting.setdefault(loop, asyncio.Lock()):
        if loop not in _hubs:
            new = Hub()
            await new.start()
            _hubs[loop] = new
    return _hubs[loop]


def dispatch(message: dict[str, Any]) -> None:
    kind, reply_id = message["type"], int(message["reply"])
    if kind in ("watch", "unwatch", "stop"):
        if (owner := live.owned.get(reply_id)) is not None:
            owner.on_remote(message)  # type: ignore[attr-defined]
        elif (claim := live.claiming.get(reply_id)) is not None:
            # The row already says `streaming` but our claim has not returned yet: answer once it has.
            claim.add_done_callback(lambda _: dispatch(message))
        return
    mirror = live.mirrors.get(reply_id)
    if isinstance(mirror, Mirror):
        mirror.on_owner(message)


class Mirror(LiveReply):
    """A reply another process is writing, as this process's watchers see it."""

    def __init__(self, reply: Message, hub: Hub) -> None:
        super().__init__(reply)
        self.hub = hub
        self.answered = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.finishing: asyncio.Task[None] | None = None

    def start(self) -> None:
        live.mirrors[self.reply.pk] = self
        self._ask(start=0)
        # It may outlive the request that started it (project/tuning/threads.py: that request's thread is gone).
        self.task = asyncio.create_task(self._keep(), context=contextvars.Context())

    def _ask(self, *, start: int) -> None:
        self.hub.post(
            to=owner_group(self.reply.pk),
            message={"type": "watch", "reply": self.reply.pk, "channel": self.hub.channel, "start": start},
            group=True,
        )

    def stop(self, reason: str) -> None:
        request_remote_stop(self.hub, self.reply.pk)

    async def ready(self) -> None:
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT):
                await self.answered.wait()
        except TimeoutError:
            pass  # the owner is gone; _keep follows the checkpoints and ids start over

    def watchers_changed(self) -> None:
        if not self.watchers and not self.finished:
            self._let_go()
            self.hub.post(
                to=owner_group(self.reply.pk),
                message={"type": "unwatch", "reply": self.reply.pk, "channel": self.hub.channel},
                group=True,
            )

    def _let_go(self) -> None:
        if live.mirrors.get(self.reply.pk) is self:
            del live.mirrors[self.reply.pk]
        if self.task and self.task is not asyncio.current_task():
            self.task.cancel()

    def on_owner(self, message: dict[str, Any]) -> None:
        self.answered.set()
        if message["type"] == "parts":
            start, parts = message["start"], message["parts"]
            if start > self.version:  # a gap (a lost message): ask again from what we have
                self._ask(start=self.version)
                return
            skip = self.version - start  # already have these
            self.notice = message.get("notice", self.notice)
            self.extend(parts[skip:], bytes(message["kinds"])[skip:])
        elif message["type"] == "finished":
            self.finishing = asyncio.create_task(self._finish())

    async def _finish(self) -> None:
        self.reply = await Message.objects.aget(pk=self.reply.pk)
        self._close()

    def _close(self) -> None:
        self.finished = True
        self._let_go()
        self.wake()

    async def _keep(self) -> None:
        """Renew the lease while watched; when the owner stops answering (it died), follow the
        checkpoints instead, until the sweep closes the row as interrupted."""
        while not self.finished:
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT):
                    await self.answered.wait()
            except TimeoutError:
                await self._follow_checkpoints()
                return
            await asyncio.sleep(lease_seconds() / 3)
            self.answered.clear()
            self._ask(start=self.version)

    async def _follow_checkpoints(self) -> None:
        # Checkpoints only ever grow, so what is new since the last read is appended as a part.
        while not self.finished:
            row = await Message.objects.aget(pk=self.reply.pk)
            shown_text, shown_thinking = self.text(TEXT), self.text(THINKING)
            new_parts, new_kinds = [], bytearray()
            for kind, shown, stored in ((THINKING, shown_thinking, row.thinking), (TEXT, shown_text, row.content)):
                if stored.startswith(shown) and len(stored) > len(shown):
                    new_parts.append(stored[len(shown) :])
                    new_kinds.append(kind)
            if new_parts:
                self.extend(new_parts, new_kinds)
            if row.is_finished:
                self.reply = row
                self._close()
                return
            await asyncio.sleep(POLL_SECONDS)


class Subscribers:
    """The owner's side: which other processes follow a reply, from which part, until when."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}
        self.leases: dict[str, float] = {}
        self.notice_sent = ""

    def __bool__(self) -> bool:
        return bool(self.positions)

    def add(self, channel: str, start: int) -> None:
        self.positions[channel] = min(start, self.positions.get(channel, start))
        self.leases[channel] = time.monotonic() + lease_seconds()

    def remove(self, channel: str) -> None:
        self.positions.pop(channel, None)
        self.leases.pop(channel, None)

    def expire(self) -> None:
        now = time.monotonic()
        for channel in [c for c, until in self.leases.items() if until < now]:
            self.remove(channel)

    def flush(self, hub: Hub, reply: LiveReply, *, force: bool = False) -> None:
        """Send each follower what it has not had yet, in one message."""
        self.expire()
        version = reply.version
        for channel, position in self.positions.items():
            if position < version or force or reply.notice != self.notice_sent:
                hub.post(
                    to=channel,
                    message={
                        "type": "parts",
                        "reply": reply.reply.pk,
                        "start": position,
                        "parts": reply.parts[position:version],
                        "kinds": bytes(reply.kinds[position:version]),
                        "notice": reply.notice,
                    },
                )
                self.positions[channel] = version
        self.notice_sent = reply.notice

    def finished(self, hub: Hub, reply: LiveReply) -> None:
        self.flush(hub, reply)
        for channel in list(self.positions):
            hub.post(to=channel, message={"type": "finished", "reply": reply.reply.pk})
        self.positions.clear()
        self.leases.clear()


def request_remote_stop(hub: Hub, reply_id: int) -> None:
    hub.post(to=owner_group(reply_id), message={"type": "stop", "reply": reply_id}, group=True)
