"""The process's shared HTTP client and the SSE request every adapter makes through it."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from html import unescape
from typing import Any

import httpx
from httpx_sse import ServerSentEvent

from . import ProviderError, Timeouts
from .eventstream import server_sent_events

# One client per event loop: a pooled client is bound to the loop that created it, and a worker
# process runs exactly one loop, so in production this is one client per process.
_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
_client_options = {"transport": "aiohttp", "max_connections": 2000}

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
_SECRET_PATTERN = re.compile(r"(sk-|sk_|key-)[A-Za-z0-9_\-*]{4,}")


def configure_client(*, transport: str, max_connections: int) -> None:
    _client_options.update(transport=transport, max_connections=max_connections)


def shared_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        for stale in [other for other in _clients if other.is_closed()]:
            del _clients[stale]
        client = _clients[loop] = _new_client()
    return client


def _new_client() -> httpx.AsyncClient:
    # The pool must be at least as large as the concurrency: a smaller pool queues a request for
    # the whole length of another reply.
    limits = httpx.Limits(max_connections=int(_client_options["max_connections"]), max_keepalive_connections=100)
    if _client_options["transport"] == "aiohttp":
        from httpx_aiohttp import HttpxAiohttpClient

        return HttpxAiohttpClient(limits=limits, trust_env=False)
    return httpx.AsyncClient(limits=limits, trust_env=False)


def request_body(payload: dict[str, Any]) -> bytes:
    """The request's JSON as the bytes sent, built before the stream opens.

    An adapter builds it in `stream()` and hands its event generator only these bytes, so an open stream
    holds the conversation once (httpx keeps the body for as long as the response lives) instead of also
    as turns and as JSON text for minutes. UTF-8 rather than ASCII escapes: a non-Latin prompt is half the size
    or less on the wire and in memory.
    """
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@asynccontextmanager
async def open_sse(
    *, url: str, body: bytes, headers: dict[str, str], timeouts: Timeouts
) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
    """POST `body` and yield the response's SSE events; every failure becomes a ProviderError."""
    # No read timeout for the client: the IdleTimer below is the same rule at a fraction of the cost.
    timeout = httpx.Timeout(connect=timeouts.connect, read=None, write=timeouts.connect, pool=timeouts.connect)
    headers = {**headers, "accept": "text/event-stream", "content-type": "application/json"}
    idle = IdleTimer(timeouts.idle, progress=timeouts.progress)
    try:
        async with shared_client().stream("POST", url, content=body, headers=headers, timeout=timeout) as response:
            idle.touch()
            if response.status_code >= 400:
                raise await _status_error(response)
            content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
            if content_type != "text/event-stream":
                if content_type in ("application/json", "text/html") or content_type.endswith("+json"):
                    # An error object (vLLM's, some proxies') or an error page where the stream should be: its
                    # message, read bounded, as for an error status.
                    raise await _status_error(response)
                raise ProviderError(
                    "The model provider answered with something other than a stream "
                    f"(content type {content_type or 'missing'!r})."
                )
            # Most streams come unencoded: then the raw bytes, past httpx's decoder layer (1.7 % of the relay's
            # CPU at C=100, docs/decisions/0023); a compressing proxy's gzip or br still goes through it.
            plain = response.headers.get("content-encoding", "identity").strip().lower() == "identity"
            chunks = response.aiter_raw() if plain else response.aiter_bytes()
            yield server_sent_events(
                chunks, on_chunk=idle.touch, on_event=idle.progressed, max_event_bytes=timeouts.max_event_bytes
            )
    except asyncio.CancelledError:
        if not idle.expired or idle.task.uncancel() > 0:
            raise  # a Stop, a browser gone, a shutdown: not ours to turn into an error
        if idle.expired == "progress":
            raise ProviderError(
                f"The model kept sending data for {timeouts.progress:g} seconds without completing an event, "
                "so the reply was stopped (timeout)."
            ) from None
        raise ProviderError(
            f"The model sent nothing for {timeouts.idle:g} seconds, so the reply was stopped (timeout)."
        ) from None
    except httpx.TimeoutException as exc:
        # httpx-aiohttp reports a refused connection as ConnectTimeout, so the two read the same.
        raise ProviderError(CONNECT_FAILED, retryable=True) from exc
    except httpx.ConnectError as exc:
        raise ProviderError(CONNECT_FAILED, retryable=True) from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise ProviderError(LOST, retryable=True) from exc
    except httpx.HTTPError as exc:
        raise ProviderError(f"Request to the model provider failed: {type(exc).__name__}.", retryable=True) from exc
    finally:
        idle.close()


class IdleTimer:
    """Cancels the task reading a stream when no byte has come for `seconds` (CHAT_IDLE_TIMEOUT), or no
    complete event for `progress` seconds while bytes still come (CHAT_PROGRESS_TIMEOUT).

    A client's read timeout re-arms a timer for every packet: aiohttp's was 2.6 % of the relay's CPU
    at C=100 (docs/decisions/0015). Here a chunk or an event only notes the time, and the one timer, when
    it fires, either finds both clocks moved since (and waits for the earlier of their new deadlines) or
    ends the stream. Bytes alone are not progress: a trickle that never completes an event would
    otherwise hold the reply open (and its buffer up to CHAT_MAX_EVENT_BYTES) for as long as it trickles.
    """

    def __init__(self, seconds: float, *, progress: float) -> None:
        self.seconds, self.progress = seconds, progress
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.last = self.last_event = self.loop.time()
        self.expired = ""  # "idle" or "progress" once the timer has cancelled the task
        self._handle = self.loop.call_at(self.last + min(self.seconds, self.progress), self._check)

    def touch(self) -> None:
        self.last = self.loop.time()

    def progressed(self) -> None:
        self.last_event = self.loop.time()

    def _check(self) -> None:
        now = self.loop.time()
        idle_due, progress_due = self.last + self.seconds, self.last_event + self.progress
        if now < idle_due and now < progress_due:
            self._handle = self.loop.call_at(min(idle_due, progress_due), self._check)
        elif self.task is not None:
            self.expired = "idle" if now >= idle_due else "progress"
            self.task.cancel()

    def close(self) -> None:
        self._handle.cancel()


CONNECT_FAILED = "Could not connect to the model provider."
LOST = "The connection to the model was lost before the reply was complete."


ERROR_BODY_LIMIT = 4000  # bytes of an error body read: a message's worth, and an HTML page's <title>
_TITLE = re.compile(rb"<title\b[^>]{0,200}>(.{0,1000}?)</title", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^<>]{0,500}>")


async def _status_error(response: httpx.Response) -> ProviderError:
    # Read only the start: an error body is for a message, and a proxy's page can be of any size.
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= ERROR_BODY_LIMIT:
            break
    body = body[:ERROR_BODY_LIMIT]
    status = response.status_code
    detail = _error_detail(body, content_type=response.headers.get("content-type", ""))
    detail = detail or response.reason_phrase or "no details"
    prefix = {
        401: "The API key was rejected",
        403: "Access to this model was refused",
        404: "The model or endpoint was not found",
        413: "The conversation is too long for this model",
        429: "The provider is rate-limiting requests",
        529: "The provider is overloaded",
    }.get(status, "The model provider returned an error" if status < 500 else "The model provider had a server error")
    if status < 400:  # a 200 whose body is an error object or a page, where the stream should be
        prefix = "The model provider answered with an error instead of a stream"
    return ProviderError(
        redact(f"{prefix} (HTTP {status}): {detail}"),
        retryable=status in RETRYABLE_STATUSES,
        retry_after=retry_after_seconds(response.headers),
        status=status,
    )


def _error_detail(body: bytes, *, content_type: str = "") -> str:
    if "html" in content_type.lower() or body.lstrip()[:1] == b"<":
        return _html_title(body)
    try:
        data = json.loads(body)
    except ValueError:
        return one_line(body.decode("utf-8", "replace"), 300)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or "")
    if isinstance(error, str):
        return error
    return str(data.get("message", "")) if isinstance(data, dict) else ""


def _html_title(body: bytes) -> str:
    """An error page from a proxy in front of the model: its title as plain text, never its markup ("" if none)."""
    match = _TITLE.search(body)
    if match is None:
        return ""
    text = unescape(_TAG.sub("", match.group(1).decode("utf-8", "replace")))
    return one_line(text, 200)


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    if value := headers.get("retry-after-ms"):
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def redact(text: str) -> str:
    """Keys can appear in provider error messages; they must never reach the browser or the logs."""
    return _SECRET_PATTERN.sub(lambda m: m.group(1) + "…", text)


async def aclose_shared_client() -> None:
    """Close this loop's client (tests and shutdown); the next request makes a new one."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


# Decimal for every number with a fraction or an exponent: a provider's cost is kept to its last digit, never
# rounded through a float. The C scanner still does the work; it calls Decimal only where a float would be.
_exact = json.JSONDecoder(parse_float=Decimal)


def decode(data: str, *, exact: bool = False) -> Any:
    """One SSE data line's JSON; a line that is not JSON ends the reply rather than being skipped.
    `exact`: non-integer numbers as Decimal, as written, instead of float."""
    try:
        return _exact.decode(data) if exact else json.loads(data)
    except ValueError as exc:
        raise ProviderError("The model sent a malformed event; the reply was stopped.") from exc


def reported_error(error: dict[str, Any]) -> str:
    # The message is the server's, stored and shown: one line of bounded length, whatever was sent.
    return redact(
        f"The model reported an error: {one_line(str(error.get('message') or error.get('type') or 'unknown'), 500)}"
    )


def one_line(text: str, limit: int) -> str:
    """A server's text as one line of at most `limit` characters, for a message stored and shown."""
    return " ".join(text.split())[:limit]
