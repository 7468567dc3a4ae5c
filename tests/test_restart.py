"""A restart in place on one machine: the new daphne binds the old one's port while the old one drains."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from chat.models import Status
from tests.conftest import BrowserStream, ChatClient, LiveServer, free_port, in_background, start_server, wait_for_text
from tests.fake_upstream import FakeUpstream, Scenario

pytestmark = pytest.mark.django_db(transaction=True)

# Long enough that the new server, starting on a loaded machine, starts well within it.
GRACE = 15


def wait_for_log(server: LiveServer, lines: tuple[str, ...], timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()
        for line in lines:
            if line in log:
                return line
        time.sleep(0.05)
    raise AssertionError(f"none of {lines} in the log:\n{server.log()[-2000:]}")


def test_a_new_server_binds_the_same_port_at_once_while_the_old_one_drains(
    upstream: FakeUpstream, sim: FakeUpstream, tmp_path: Path, user
) -> None:
    port = free_port()
    started: list[LiveServer] = []
    try:
        old = start_server(upstream, tmp_path, port=port, CHAT_SHUTDOWN_GRACE=str(GRACE))
        started.append(old)
        browser = ChatClient(old, user)
        sim.enqueue(Scenario(tokens=2500, interval=0.01))  # about 25 s: longer than the grace
        reply = browser.ask(browser.conversation(), "A long one, please")
        reader, seen = in_background(lambda: browser.stream(reply, timeout=30))
        wait_for_text(reply, 20)

        old.process.send_signal(signal.SIGTERM)
        terminated = time.monotonic()
        (tmp_path / "new").mkdir()
        new = start_server(upstream, tmp_path / "new", port=port)  # the same port, at once
        started.append(new)
        # start_server's first answer may have come from the old server: wait for the new one's verdict.
        outcome = wait_for_log(new, ("Listening on TCP address", "Listen failure"))
        assert outcome == "Listening on TCP address", new.log()[-600:]
        bound_after = time.monotonic() - terminated
        served = httpx.get(f"{new.url}/accounts/login/", timeout=5)
        assert served.status_code == 200 and new.process.poll() is None
        assert old.process.poll() is None, "the old server should still be draining its reply"
        assert bound_after < GRACE, f"the new server listened only {bound_after:.1f} s after the SIGTERM"

        # The old one finishes or interrupts its reply, with its text, then exits.
        assert old.process.wait(timeout=GRACE + 10) is not None
        reader.join(timeout=15)
        reply.refresh_from_db()
        assert reply.status in {Status.COMPLETED, Status.INTERRUPTED}, reply.status
        assert len(reply.content) >= 20
        [watched] = seen  # what the browser saw from the old server before it let go of the stream
        if isinstance(watched, BrowserStream):
            assert watched.text() and reply.content.startswith(watched.text())
        # A browser that reconnects lands on the new server and gets the stored reply.
        replay = ChatClient(new, user).stream(reply)
        assert replay.names()[-1] == "done" and reply.content[:40] in replay.first("done").data
    finally:
        for server in started:
            server.stop()
