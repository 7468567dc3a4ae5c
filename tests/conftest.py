"""Fixtures: the loopback provider simulator, a live daphne server on the test database, and a chat client."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection
from django.test import Client

from chat.models import Conversation, Message, Role, Status
from chat.streaming.providers.http import aclose_shared_client, configure_client
from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
MODELS = "openai:gpt-4o-mini,anthropic:claude-sonnet-4-5,demo:demo,openai:local-llama"
# Short limits so every failure path runs in seconds; each test that needs others starts its own server.
SERVER_ENV = {
    "CHAT_MODELS": MODELS,
    "CHAT_IDLE_TIMEOUT": "1.5",
    "CHAT_MAX_DURATION": "30",
    "CHAT_RETRY_BASE_DELAY": "0.05",
    "CHAT_RETRY_MAX_DELAY": "0.5",
    "CHAT_MAX_RETRIES": "2",
    "CHAT_HEARTBEAT_SECONDS": "0.5",
    "CHAT_CHECKPOINT_SECONDS": "0.2",
    "CHAT_DEMO_INTERVAL": "0.001",
    "CHAT_MAX_MESSAGE_CHARS": "2000",
    # The failure-table tests check that a closed tab cancels at once; resume tests set their own.
    "CHAT_UNWATCHED_TIMEOUT": "0",
}


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def sim(upstream: FakeUpstream) -> FakeUpstream:
    upstream.reset()
    return upstream


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def skip_without_connection_pool() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the connection pool is PostgreSQL's (psycopg-pool); SQLite has none")


def database_url() -> str:
    """The test database pytest-django made, as a URL the server subprocess can open."""
    conf = connection.settings_dict
    if conf["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{conf['NAME']}"
    auth = conf["USER"] + (f":{conf['PASSWORD']}" if conf["PASSWORD"] else "")
    return f"postgres://{auth}@{conf['HOST'] or '127.0.0.1'}:{conf['PORT'] or 5432}/{conf['NAME']}"


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    upstream: FakeUpstream, tmp: Path, *, server: str = "daphne", port: int | None = None, **env: str
) -> LiveServer:
    port = port or free_port()
    log_path = tmp / f"{server}-{port}.log"
    full_env = {
        **os.environ,
        **SERVER_ENV,
        "DATABASE_URL": database_url(),
        "OPENAI_API_KEY": "sk-test-openai-secret",
        "OPENAI_BASE_URL": upstream.openai_base_url,
        "ANTHROPIC_API_KEY": "sk-ant-test-secret",
        "ANTHROPIC_BASE_URL": upstream.anthropic_base_url,
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    if server == "daphne":
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "project.asgi:application"]
    else:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "project.asgi:application",
        ]
    log_file = log_path.open("wb")
    process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    live = LiveServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{live.log()}")
        try:
            httpx.get(f"{live.url}/accounts/login/", timeout=1)
            return live
        except httpx.HTTPError:
            time.sleep(0.1)
    live.stop()
    raise RuntimeError(f"server did not start:\n{live.log()}")


@pytest.fixture(scope="session")
def asgi_server(
    django_db_setup: None, django_db_blocker: Any, upstream: FakeUpstream, tmp_path_factory: Any
) -> Iterator[LiveServer]:
    with django_db_blocker.unblock():
        server = start_server(upstream, tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


@pytest.fixture
def server_factory(
    transactional_db: None, upstream: FakeUpstream, tmp_path: Path
) -> Iterator[Callable[..., LiveServer]]:
    """Extra servers with their own settings; stopped when the test ends."""
    started: list[LiveServer] = []

    def factory(**env: str) -> LiveServer:
        started.append(start_server(upstream, tmp_path, **env))
        return started[-1]

    yield factory
    for server in started:
        server.stop()


@dataclass
class StreamEvent:
    event: str
    data: str
    id: str
    at: float


@dataclass
class BrowserStream:
    """What the browser received on one reply's event stream."""

    status: int
    headers: httpx.Headers
    raw: str
    events: list[StreamEvent] = field(default_factory=list)
    # When stop_after ended the read, taken just before the connection closed: no server can have seen
    # the browser leave before this moment, so a timer counted from the departure cannot start earlier.
    left_at: float | None = None

    def names(self) -> list[str]:
        return [e.event for e in self.events]

    def text(self) -> str:
        """The visible text the browser was sent live (HTML-unescaped), as a user saw it grow.

        A text event (type `message`) carries the raw delta; the rendered markdown comes in `render`
        events (see relay.LiveView)."""
        return "".join(e.data for e in self.events if e.event == "message")

    def rendered(self) -> str:
        """The reply's body as the page builds it from the `render` events: finished blocks, then the tail."""
        blocks, tail = "", ""
        for e in self.events:
            if e.event == "render":
                line, _, html = e.data.partition("\n")
                head = json.loads(line)
                # Lengths count UTF-16 code units, as the page's JavaScript does.
                whole = tail.encode("utf-16-le")[: 2 * head["same"]] + html.encode("utf-16-le")
                finished, tail = (
                    whole[: 2 * head["cut"]].decode("utf-16-le"),
                    whole[2 * head["cut"] :].decode("utf-16-le"),
                )
                blocks = ("" if head.get("replace") else blocks) + finished
        return blocks + tail

    def thinking(self) -> str:
        return "".join(raw_delta(e.data) for e in self.events if e.event == "thinking")

    def first(self, name: str) -> StreamEvent:
        return next(e for e in self.events if e.event == name)


def raw_delta(data: str) -> str:
    import html

    return html.unescape(data.split("<", 1)[0])


def parse_stream(raw: str, times: list[tuple[int, float]] | None = None) -> list[StreamEvent]:
    events = []
    # As EventSource does, an event counts once its blank line has arrived: the part after the last one is
    # still on its way (a read can end mid-event), and taking it early would keep a truncated copy.
    for block in raw.replace("\r\n", "\n").split("\n\n")[:-1]:
        name, data, event_id = "message", [], ""
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value[:1] == " " else value  # the spec drops one space after the colon
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
        if data:
            events.append(StreamEvent(event=name, data="\n".join(data), id=event_id, at=0.0))
    return events


class ChatClient:
    """A logged-in browser, minus the browser: real HTTP to the live server."""

    def __init__(self, server: LiveServer, user: Any) -> None:
        django_client = Client()
        django_client.force_login(user)
        self.user = user
        self.http = httpx.Client(base_url=server.url, timeout=20)
        self.http.cookies.set("sessionid", django_client.cookies["sessionid"].value)
        self.http.get("/chat/")
        self.csrf = self.http.cookies.get("csrftoken", "")

    def conversation(self, model: str = "openai:gpt-4o-mini", **fields: Any) -> Conversation:
        return Conversation.objects.create(user=self.user, model=model, **fields)

    def send(self, conversation: Conversation, text: str, *, htmx: bool = True, **fields: str) -> httpx.Response:
        headers = {"X-CSRFToken": self.csrf, **({"HX-Request": "true"} if htmx else {})}
        return self.http.post(f"/chat/{conversation.pk}/messages/", data={"text": text, **fields}, headers=headers)

    def ask(self, conversation: Conversation, text: str = "Hello there", **fields: str) -> Message:
        response = self.send(conversation, text, **fields)
        assert response.status_code == 200, response.text
        match = re.search(r"/chat/replies/(\d+)/stream/", response.text)
        assert match, response.text
        return Message.objects.get(pk=int(match.group(1)))

    def exchange(self, conversation: Conversation | None = None) -> tuple[Message, BrowserStream]:
        """Ask (in a new conversation by default), read the reply's stream to its end: the reply as stored then."""
        reply = self.ask(conversation or self.conversation())
        stream = self.stream(reply)
        reply.refresh_from_db()
        return reply, stream

    def stream(
        self,
        reply: Message,
        *,
        last_event_id: str | None = None,
        stop_after: Callable[[BrowserStream], bool] | None = None,
        timeout: float = 20,
    ) -> BrowserStream:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        started = time.monotonic()
        with self.http.stream("GET", f"/chat/replies/{reply.pk}/stream/", headers=headers, timeout=timeout) as resp:
            result = BrowserStream(status=resp.status_code, headers=resp.headers, raw="")
            for chunk in resp.iter_text():
                result.raw += chunk
                now = time.monotonic() - started
                parsed = parse_stream(result.raw)
                for event in parsed[len(result.events) :]:
                    event.at = now
                    result.events.append(event)
                if stop_after and stop_after(result):
                    result.left_at = time.monotonic()
                    break  # leaving the with-block closes the connection, as a closed tab does
        return result

    def stop(self, reply: Message) -> httpx.Response:
        return self.http.post(
            f"/chat/replies/{reply.pk}/stop/", headers={"X-CSRFToken": self.csrf, "HX-Request": "true"}
        )

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def user(transactional_db: None, django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="alice", password="a-long-test-password")


@pytest.fixture
def other_user(transactional_db: None, django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="mallory", password="another-test-password")


@pytest.fixture
def chat(asgi_server: LiveServer, user: Any) -> Iterator[ChatClient]:
    client = ChatClient(asgi_server, user)
    yield client
    client.close()
    wait_until_settled()


def wait_until_settled(timeout: float = 10) -> None:
    """Let the server finish writing replies before the test database is flushed under it."""
    deadline = time.monotonic() + timeout
    while Message.objects.filter(status="streaming").exists():
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)


def wait_for_status(reply: Message, statuses: set[str], timeout: float = 10) -> Message:
    deadline = time.monotonic() + timeout
    while True:
        reply.refresh_from_db()
        if reply.status in statuses:
            return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"reply {reply.pk} is {reply.status}, expected one of {statuses}")
        time.sleep(0.02)


def in_background(target) -> tuple[threading.Thread, list]:
    """Run a browser connection in a thread; a connection cut by a killed server records its error."""
    results: list = []

    def run() -> None:
        try:
            results.append(target())
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def wait_for_text(reply: Message, length: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(Message.objects.get(pk=reply.pk).content) < length:
        assert time.monotonic() < deadline, "the reply never checkpointed any text"
        time.sleep(0.05)


@pytest.fixture(params=["aiohttp", "httpx"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Each upstream test over both of httpx's transports."""
    configure_client(transport=request.param, max_connections=200)
    yield request.param
    await aclose_shared_client()
    configure_client(transport="aiohttp", max_connections=200)


def stored_exchange(
    conversation: Conversation, question: str = "A question.", answer: str = "An answer.", **reply: Any
) -> Message:
    """A finished question and its reply in `conversation`, stored as a streamed reply leaves them; the reply's
    fields (status, tokens, cost, times...) can be given."""
    provider, _, model = conversation.model.partition(":")
    Message.objects.create(conversation=conversation, role=Role.USER, content=question, status=Status.COMPLETED)
    fields = {"status": Status.COMPLETED, "provider": provider, "model": model, **reply}
    return Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content=answer, **fields)
