"""Past capacity a worker refuses new replies at once, with 503 and Retry-After, and keeps the user's text."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from django.db import connection
from django.test import Client

from chat.models import Conversation, Message, Status
from chat.streaming import admission
from chat.streaming.admission import Pressure
from tests.conftest import ChatClient, skip_without_connection_pool, wait_for_status
from tests.fake_upstream import Scenario


@pytest.fixture
def pressure() -> Iterator[type[Pressure]]:
    Pressure.lag = Pressure.db_wait = 0.0
    yield Pressure
    Pressure.lag = Pressure.db_wait = 0.0


async def test_the_lag_probe_sees_a_blocked_loop_and_lets_go_once_it_runs_freely(settings, pressure) -> None:
    settings.CHAT_MAX_LAG = 0.2
    probe = asyncio.create_task(admission.measure_pressure())
    try:
        await asyncio.sleep(0.35)
        assert admission.refusal() is None, f"an idle loop lags {pressure.lag:.3f} s"
        time.sleep(0.5)  # the loop runs nothing else meanwhile, as when every stream's tokens queue on it
        await asyncio.sleep(0.01)  # the probe's overdue timer fires first, half a second late
        assert pressure.lag >= 0.4
        refusal = admission.refusal()
        assert refusal is not None and refusal.status == 503 and refusal.retry_after == 1
        assert "Try again in 1 s" in refusal.message
        deadline = time.monotonic() + 5
        while admission.refusal() is not None:  # a free loop is open again within about a second
            assert time.monotonic() < deadline, f"still refusing at {pressure.lag:.3f} s of lag"
            await asyncio.sleep(0.1)
    finally:
        probe.cancel()


def test_the_pool_queue_estimate_learns_the_rate_only_while_requests_wait() -> None:
    queue = admission.PoolQueue()

    def stats(*, num: int, waiting: int) -> float:
        return queue.update({"requests_num": num, "requests_waiting": waiting}, elapsed=0.1)

    # Busy but not saturated: requests come and go, none waits, nothing is learnt.
    assert stats(num=0, waiting=0) == 0 and stats(num=50, waiting=0) == 0 and queue.rate is None
    # A cold start queues while the pool opens its connections: no rate known yet, so no estimate.
    assert stats(num=80, waiting=20) == 0
    # Saturated at both ends of a probe: 30 handed out in 0.1 s is 300 a second; 60 waiting is 0.2 s.
    assert stats(num=150, waiting=60) == pytest.approx(60 / 300)
    assert queue.rate == pytest.approx(300)
    # The hand-outs slow to 50 a second: the rate follows over a few probes and the expected wait grows.
    waits = [stats(num=150 + 5 * i + 100 * i, waiting=60 + 100 * i) for i in range(1, 6)]
    assert waits == sorted(waits) and waits[-1] > 3
    # Nothing handed out while 500 wait (a stuck database): the wait is unbounded after a while.
    for _ in range(40):
        wait = stats(num=675, waiting=525)
    assert wait > 100
    # The queue drains: the rate it learnt while stuck is forgotten, and a new queue is measured afresh.
    assert stats(num=2000, waiting=0) == 0 and queue.rate is None
    assert stats(num=2010, waiting=5) == 0
    assert stats(num=2060, waiting=5) == pytest.approx(5 / 500)

    # Requests that time out leave the queue too, but with nothing: they are no measure of capacity.
    timing_out = admission.PoolQueue()
    timing_out.update({"requests_num": 100, "requests_waiting": 50, "requests_errors": 0}, elapsed=0.1)
    # 0.1 s later: 40 timed out, 10 got a connection, 10 new ones wait.
    wait = timing_out.update({"requests_num": 110, "requests_waiting": 10, "requests_errors": 40}, elapsed=0.1)
    assert timing_out.rate == pytest.approx(100) and wait == pytest.approx(0.1)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("limit", "signal", "late", "retry_after"),
    [("CHAT_MAX_LAG", "lag", 3.4, "4"), ("CHAT_MAX_DB_WAIT", "db_wait", 7.2, "8")],
    ids=["lagging loop", "long database queue"],
)
def test_a_send_to_a_full_worker_is_refused_before_the_database_is_touched(
    settings, pressure, django_user_model, django_assert_num_queries, limit, signal, late, retry_after
) -> None:
    setattr(settings, limit, 1.0)
    user = django_user_model.objects.create_user(username="busy", password="a-long-test-password")
    conversation = Conversation.objects.create(user=user, model="openai:gpt-4o-mini")
    client = Client()
    client.force_login(user)
    setattr(pressure, signal, late)
    url = f"/chat/{conversation.pk}/messages/"
    with django_assert_num_queries(0):  # not even the session: no wait for a connection either
        response = client.post(url, {"text": "Anyone there?"}, headers={"HX-Request": "true"})
    assert response.status_code == 503
    assert response["Retry-After"] == retry_after
    # Said next to the composer, which is not replaced and so keeps the typed text.
    assert response["HX-Retarget"] == "#composer-status"
    assert "busy with other replies" in response.content.decode()
    assert not Message.objects.exists()

    settings.SECURE_HSTS_SECONDS = 3600
    with django_assert_num_queries(0):
        response = client.post("/chat/new/", {"text": "A new chat then?"}, secure=True)
    assert response.status_code == 503 and response["Retry-After"] == retry_after
    assert_security_headers(response.headers)
    assert response["Strict-Transport-Security"].startswith("max-age=3600")
    assert f"Try again in {retry_after} s" in response.content.decode()
    assert Conversation.objects.count() == 1, "a refused first message starts no conversation"

    setattr(pressure, signal, 0.5)  # under the threshold: the same send goes through
    assert client.post(url, {"text": "Anyone there?"}, headers={"HX-Request": "true"}).status_code == 200
    setattr(pressure, signal, late)
    setattr(settings, limit, 0)  # the signal switched off: it goes through however late
    assert client.post(url, {"text": "Anyone there?"}, headers={"HX-Request": "true"}).status_code == 200
    assert Message.objects.filter(status=Status.QUEUED).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_worker_at_its_stream_cap_refuses_new_replies_but_finishes_the_ones_it_has(
    server_factory, user: Any, sim
) -> None:
    chat = ChatClient(server_factory(CHAT_MAX_STREAMS="1"), user)
    try:
        sim.enqueue(Scenario(tokens=30, interval=0.05))
        conversation = chat.conversation()
        first = chat.ask(conversation, "Write slowly")
        running = threading.Thread(target=chat.stream, args=(first,))
        running.start()
        wait_for_status(first, {Status.STREAMING})

        refused = chat.send(chat.conversation(), "And this one?")
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "5"
        assert "busy with other replies" in refused.text and refused.headers["HX-Retarget"] == "#composer-status"
        assert_security_headers(
            refused.headers
        )  # refused at the door (project/tuning/door.py), before Django's handler
        retry = chat.http.post(
            f"/chat/replies/{first.pk}/regenerate/", headers={"X-CSRFToken": chat.csrf, "HX-Request": "true"}
        )
        assert retry.status_code == 503 and retry.headers["HX-Retarget"] == "#composer-status"

        running.join(timeout=20)
        assert wait_for_status(first, {Status.COMPLETED}).content.startswith("tok0 tok1")
        assert Message.objects.count() == 2, "the refused requests stored nothing"
        sim.enqueue(Scenario(tokens=3))
        chat.stream(chat.ask(conversation, "Now?"))  # room again
    finally:
        chat.close()


@pytest.mark.django_db(transaction=True)
def test_a_request_that_gets_no_database_connection_in_time_is_told_to_come_back(
    server_factory, user: Any, sim
) -> None:
    skip_without_connection_pool()
    server = server_factory(DATABASE_POOL_SIZE="1", DATABASE_POOL_TIMEOUT="0.5")
    chat = ChatClient(server, user)
    conversation = chat.conversation()
    outcome: dict[str, httpx.Response] = {}
    try:
        with send_held_by_a_row_lock(chat, conversation, outcome):
            started = time.monotonic()
            busy = chat.http.get("/chat/")
            waited = time.monotonic() - started
        assert busy.status_code == 503, busy.text
        assert busy.headers["Retry-After"] == "5" and "busy" in busy.text
        assert 0.4 < waited < 5, f"answered after {waited:.2f} s"
        assert outcome["send"].status_code == 200, "the request that held the connection carries on"
        assert "no database connection within 0.5 s for /chat/" in server.log()
        assert "Traceback" not in server.log()
        sim.enqueue(Scenario(tokens=2))
        assert chat.stream(Message.objects.get(status=Status.QUEUED)).names()[-1] == "done"
    finally:
        chat.close()


@pytest.mark.django_db(transaction=True)
def test_while_requests_queue_for_a_stuck_database_a_new_reply_is_refused_at_once(
    server_factory, user: Any, sim
) -> None:
    skip_without_connection_pool()
    # CHAT_MAX_DB_WAIT defaults to the pool's 4 s timeout: a queue the pool serves nobody from outlasts it.
    server = server_factory(DATABASE_POOL_SIZE="1", DATABASE_POOL_TIMEOUT="4")
    chat = ChatClient(server, user)
    held, other = chat.conversation(), chat.conversation()
    outcome: dict[str, httpx.Response] = {}
    try:
        queued = threading.Thread(target=lambda: outcome.update(page=chat.http.get("/chat/")))
        with send_held_by_a_row_lock(chat, held, outcome):
            queued.start()  # waits for the pool's one connection, which the send holds
            time.sleep(0.5)  # a few probes see a queue the pool serves nobody from
            started = time.monotonic()
            refused = chat.send(other, "Me too?")
            waited = time.monotonic() - started
        queued.join(timeout=20)
        assert refused.status_code == 503, refused.text
        assert waited < 1, f"refused after {waited:.2f} s: it queued for a connection first"
        assert "busy with other replies" in refused.text and refused.headers["HX-Retarget"] == "#composer-status"
        assert int(refused.headers["Retry-After"]) >= 1
        assert outcome["send"].status_code == 200 and outcome["page"].status_code == 200, "the queue was served"
        assert "1 requests waiting for a database connection" in server.log()
        assert Message.objects.filter(conversation=other).count() == 0
    finally:
        chat.close()


def assert_security_headers(headers: Any) -> None:
    """What every other page carries, on a refusal that every middleware but the CSP's never saw."""
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"


@contextmanager
def send_held_by_a_row_lock(chat: ChatClient, conversation: Conversation, outcome: dict) -> Iterator[None]:
    """While the block runs, a send to `conversation` (in a thread; its response lands in outcome["send"])
    waits for a row lock this test holds, and so holds one of the pool's connections."""
    sender = threading.Thread(target=lambda: outcome.update(send=chat.send(conversation, "Held up")))
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        try:
            # The send's UPDATE of this row waits for the lock, holding its connection.
            cursor.execute("SELECT id FROM chat_conversation WHERE id = %s FOR UPDATE", [conversation.pk])
            sender.start()
            wait_for_lock_wait(cursor)
            yield
        finally:
            cursor.execute("ROLLBACK")
    sender.join(timeout=20)


def wait_for_lock_wait(cursor: Any, timeout: float = 10) -> None:
    """Until another session is waiting for a row lock this one holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        if cursor.fetchone()[0]:
            return
        time.sleep(0.02)
    raise AssertionError("the send never reached the locked row")
