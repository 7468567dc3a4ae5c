"""The per-process checkpointer: the partial text of every reply that is due, saved in one statement."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import TYPE_CHECKING, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection

from chat.models import Message
from chat.streaming import live
from chat.streaming.live import TEXT, THINKING

if TYPE_CHECKING:
    from chat.streaming.generation import Generation

logger = logging.getLogger(__name__)

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
    transaction (Message.checkpoint_many: one pipelined UPDATE per reply) and one thread hop for all of them,
    however many replies stream."""
    every = settings.CHAT_CHECKPOINT_SECONDS
    while True:
        await wanted.wait()
        wanted.clear()
        now = time.monotonic()
        owned = cast("list[Generation]", list(live.owned.values()))  # only this process's Generations are owned
        due = [g for g in owned if g.version > g.saved_version and now >= g.checkpoint_due]
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
