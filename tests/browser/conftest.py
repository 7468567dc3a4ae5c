"""Browser fixtures: the system Chromium through Playwright, logged in to the live daphne server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import ROOT, LiveServer, wait_until_settled

SCREENSHOTS = ROOT / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def chromium(asgi_server: LiveServer) -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests drive the system Chromium at {CHROMIUM}, which is not installed")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, and Django refuses database
    # calls while one runs; the tests' own ORM calls are safe here. The server (and the test database)
    # started first, so the server never inherits the switch and keeps Django's async-safety check.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            yield browser
            browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@dataclass
class Tab:
    """One logged-in page, with every request it made and every console error it logged."""

    page: Any
    server: LiveServer
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str) -> Any:
        return self.page.goto(self.server.url + path)

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        # caret="initial": hiding the caret would inject a <style>, which our CSP rightly refuses.
        self.page.screenshot(path=str(path), caret="initial")
        return path


# What Chromium logs for anything the Content-Security-Policy refused (an inline style, a script, a load).
CSP_VIOLATION = "Content Security Policy"


def csp_violations(tab: Tab) -> list[str]:
    return [error for error in tab.errors if CSP_VIOLATION in error]


def new_tab(chromium: Any, server: LiveServer, user: Any, **options: Any) -> Iterator[Tab]:
    """A logged-in tab; when it closes, the page must have logged no Content-Security-Policy violation."""
    client = Client()
    client.force_login(user)
    options.setdefault("viewport", {"width": 1200, "height": 800})
    context = chromium.new_context(permissions=["clipboard-read", "clipboard-write"], **options)
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": server.url}])
    tab = Tab(page=context.new_page(), server=server)
    tab.page.on("request", lambda request: tab.requests.append(request.url))
    tab.page.on("console", lambda message: message.type == "error" and tab.errors.append(message.text))
    tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.page.set_default_timeout(15_000)
    yield tab
    context.close()  # closes the page's streams, as a closed tab does
    wait_until_settled()
    assert not csp_violations(tab), f"the page broke its own Content-Security-Policy: {csp_violations(tab)}"


@pytest.fixture
def tab(chromium: Any, asgi_server: LiveServer, user: Any) -> Iterator[Tab]:
    yield from new_tab(chromium, asgi_server, user)


@pytest.fixture
def phone_tab(chromium: Any, asgi_server: LiveServer, user: Any) -> Iterator[Tab]:
    """A 390 by 844 touch screen, as a phone's browser reports itself."""
    yield from new_tab(
        chromium, asgi_server, user, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )


@pytest.fixture
def dark_tab(chromium: Any, asgi_server: LiveServer, user: Any) -> Iterator[Tab]:
    yield from new_tab(chromium, asgi_server, user, color_scheme="dark")
