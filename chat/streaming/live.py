"""A reply as its watchers see it while it is written: append-only parts, a notice, then a finish."""

from __future__ import annotations

import asyncio

from chat.models import Message

TEXT, THINKING = 0, 1


class LiveReply:
    """What a browser connection reads from, whether the reply is written here or in another process.

    Parts are append-only and an event id is a count of parts, so a watcher that remembers how
    many it has sent can never miss or repeat one, and a reconnect with `Last-Event-ID: N` resumes
    at part N exactly. Several parts that arrive while a watcher is busy go out in one write.
    """

    def __init__(self, reply: Message) -> None:
        self.reply = reply
        self.parts: list[str] = []
        self.kinds = bytearray()
        self.notice = ""
        self.watchers: set[asyncio.Event] = set()
        self.finished = False
        self._held: asyncio.Event | None = None
        self._hold_timer: asyncio.TimerHandle | None = None

    @property
    def version(self) -> int:
        return len(self.parts)

    def text(self, kind: int = TEXT, *, start: int = 0, end: int | None = None) -> str:
        parts, kinds = self.parts, self.kinds
        end = len(parts) if end is None else end
        # Most replies have one kind of part, or runs of one: then a slice, not a test per part.
        if kinds.find(THINKING if kind == TEXT else TEXT, start, end) < 0:
            return "".join(parts[start:end])
        if kinds.find(kind, start, end) < 0:
            return ""
        return "".join(parts[i] for i in range(start, end) if kinds[i] == kind)

    def extend(self, parts: list[str], kinds: bytes | bytearray) -> None:
        self.parts.extend(parts)
        self.kinds.extend(kinds)
        self.wake()

    def wake(self) -> None:
        for waker in self.watchers:
            waker.set()

    def attach(self) -> asyncio.Event:
        waker = asyncio.Event()
        self.watchers.add(waker)
        self.watchers_changed()
        return waker

    def detach(self, waker: asyncio.Event) -> None:
        self.watchers.discard(waker)
        self.watchers_changed()

    def hold(self, seconds: float) -> None:
        """Count as watched for up to `seconds` before anyone watches: the request that claims a reply
        starts it before its response exists, and that response may never be read."""
        self._held = self.attach()
        self._hold_timer = asyncio.get_running_loop().call_later(seconds, self.release_hold)

    def release_hold(self) -> None:
        """A watcher has attached, or the response that was to watch is gone."""
        if self._hold_timer is not None:
            self._hold_timer.cancel()  # and lets go of this reply now, not when the timer would have run
            self._hold_timer = None
        if self._held is not None:
            held, self._held = self._held, None
            self.detach(held)

    async def ready(self) -> None:
        """Return once the parts are the owner's (a follower first waits for the owner's answer)."""

    def watchers_changed(self) -> None:
        """Hook: the owner decides when an unwatched reply is cancelled, a follower when to let go."""

    def stop(self, reason: str) -> None:
        raise NotImplementedError


# Replies this process is writing (Generations) and replies it follows for another process (mirrors).
owned: dict[int, LiveReply] = {}
mirrors: dict[int, LiveReply] = {}
# Claims this process has in flight, each done once decided (won: the reply is then in `owned`).
# A second request here for the same reply waits for it instead of racing the first to the row;
# losing that race, it would follow its own process's reply as a Mirror, under other event ids.
claiming: dict[int, asyncio.Future[None]] = {}


def here(reply_id: int) -> LiveReply | None:
    """The reply as this process shows it: written here, or followed for another process."""
    return owned.get(reply_id) or mirrors.get(reply_id)


class Shutdown:
    """Set when the worker has been asked to stop: it claims no new replies and drains the ones it has."""

    requested = False
