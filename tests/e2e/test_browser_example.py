"""The example page (``examples/browser/``) in a real browser: Debian's headless Chromium, driven by Playwright.

A system of its own (API + writers as real processes, as ``make run`` starts them) allows one origin by CORS: the
example backend's, ``http://127.0.0.1:<port>``, which serves the page and mints tickets with the tenant's token.
Messages created through the REST API appear in the page in order; the API killed (SIGKILL, workers too) and
started again, the page resumes with no gap and no duplicate; the same page loaded from another origin
(``http://localhost:<port>``) is refused by the browser. The last page is saved as ``stream-example.png`` in the
test's log folder; with ``UPDATE_DOCS_SCREENSHOT=1`` also as ``docs/stream-example.png`` (the README shows it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from chat_devtools.http import Api, wait_for
from chat_devtools.namespace import Namespace
from chat_devtools.ports import free_port
from chat_devtools.processes import System
from tests.conftest import LOG_ROOT

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pinned in requirements-dev.txt; a partial install skips with the reason
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no Chromium installed (Debian: apt-get install chromium)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (requirements-dev.txt)"),
]


@dataclass
class Example:
    system: System
    api: Api
    token: str
    origin: str  # the backend's origin, the one the API allows
    other_origin: str  # the same backend under another name: an origin the API does not allow
    log_dir: Path


@pytest.fixture(scope="module")
def example() -> Iterator[Example]:
    """A system allowing the example backend's origin, an application, and the backend holding its token."""
    if os.environ.get("API_BASE_URL"):
        pytest.skip("API_BASE_URL is set: the browser test starts and kills an API of its own")
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    namespace = Namespace.create("b", cors_allowed_origins=origin)
    log_dir = LOG_ROOT / namespace.name
    system = System(namespace, log_dir).start()
    backend = None
    try:
        api = Api(system.base_url)
        token = api.new_application("browser example")
        env = {**os.environ, "CHAT_API_URL": system.base_url, "CHAT_API_TOKEN": token, "PORT": str(port)}
        log = (log_dir / "example-backend.log").open("ab")
        backend = subprocess.Popen(
            [sys.executable, str(ROOT / "examples/browser/backend.py")], env=env, stdout=log, stderr=log
        )
        wait_for(lambda: _answers(f"{origin}/index.html"), what="the example backend")
        yield Example(system, api, token, origin, f"http://localhost:{port}", log_dir)
    finally:
        if backend is not None:
            backend.terminate()
            backend.wait(10)
        system.stop()
        namespace.destroy()


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: CI and this machine run the tests as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 720, "height": 560})
    page = context.new_page()
    page.console_messages = []
    page.on("console", lambda message: page.console_messages.append(message.text))
    yield page
    context.close()


def new_chat(example: Example) -> int:
    chat = example.api.new_chat(example.token, "browser")
    example.api.wait_chat(example.token, chat)
    return chat


def received(page: Page) -> list[int]:
    return page.evaluate("window.received")


def wait_received(page: Page, expected: list[int], timeout: float = 30.0) -> None:
    """Until the page holds at least as many messages as expected (then the test compares them exactly)."""
    deadline = time.monotonic() + timeout
    while len(received(page)) < len(expected) and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert received(page) == expected


def kill_api(system: System) -> None:
    """SIGKILL the API: gunicorn's master and every worker at once, the crash no code can react to."""
    master = psutil.Process(system.api.pid)
    for process in [*master.children(recursive=True), master]:
        os.kill(process.pid, signal.SIGKILL)
    system.api.popen.wait(10)


def test_messages_created_through_the_api_appear_in_the_page_in_order(example, page):
    chat = new_chat(example)
    page.goto(f"{example.origin}/?chat={chat}")
    page.wait_for_selector("#status.live", timeout=15_000)
    numbers = [example.api.new_message(example.token, chat, f"hello {i}") for i in range(1, 6)]
    wait_received(page, numbers)
    assert page.locator("#messages li").all_inner_texts() == [f"#{n}hello {n}" for n in numbers]


def test_the_page_resumes_after_the_api_is_killed_and_restarted_with_no_gap_and_no_duplicate(example, page):
    chat = new_chat(example)
    page.goto(f"{example.origin}/?chat={chat}")
    page.wait_for_selector("#status.live", timeout=15_000)
    api, token = example.api, example.token
    before = [api.new_message(token, chat, f"before the crash {i}") for i in range(1, 4)]
    wait_received(page, before)
    kill_api(example.system)
    page.wait_for_selector("#status.waiting", timeout=15_000)  # the page noticed
    example.system.api.start()
    example.system.wait_ready()
    # Created before the page is back: replayed after its Last-Event-ID (or ?after= with a new ticket).
    after = [api.new_message(token, chat, f"after the restart {i}") for i in range(1, 4)]
    page.wait_for_selector("#status.live", timeout=30_000)
    wait_received(page, before + after)
    page.wait_for_timeout(500)  # and nothing more comes twice
    assert received(page) == before + after
    # The browser's own reconnect (Last-Event-ID) did it: no new ticket, so no ?after= from the page.
    assert page.evaluate("window.tickets") == 1
    screenshot = example.log_dir / "stream-example.png"
    page.screenshot(path=str(screenshot), full_page=True)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, ROOT / "docs/stream-example.png")


def test_a_page_on_an_origin_the_api_does_not_allow_is_refused_by_the_browser(example, page):
    chat = new_chat(example)
    page.goto(f"{example.other_origin}/?chat={chat}")  # the same backend, another origin
    number = example.api.new_message(example.token, chat, "not for that page")
    example.api.wait_message(example.token, chat, number)

    def refused() -> bool:
        return any("CORS policy" in text for text in page.console_messages)

    deadline = time.monotonic() + 15
    while not refused() and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert refused(), page.console_messages
    assert received(page) == []
    assert page.locator("#status.live").count() == 0
