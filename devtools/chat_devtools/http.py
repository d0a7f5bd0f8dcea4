"""A small HTTP client for black-box tests, plus waiting for asynchronous writes to land."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import requests

T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout: float = 15.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``probe`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Api:
    """The REST API as a client sees it."""

    def __init__(self, base_url: str, admin_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        if admin_key:
            self.session.headers["Authorization"] = f"Bearer {admin_key}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 15)
        return self.session.request(method, f"{self.base_url}{path}", **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    # -- shortcuts that assert success ------------------------------------------------------------------------
    def new_application(self, name: str = "app") -> str:
        """Create an application; returns its token."""
        resp = self.post("/applications", json={"name": name})
        assert resp.status_code == 201, resp.text
        return resp.json()["token"]

    def new_chat(self, token: str, name: str = "chat") -> int:
        """Create a chat; returns its number."""
        resp = self.post(f"/applications/{token}/chats", json={"name": name})
        assert resp.status_code == 201, resp.text
        return resp.json()["chat_number"]

    def new_tenant_with_chat(self, name: str = "app") -> tuple[str, int]:
        """Create an application and a chat of it, and wait until the chat's row is written; (token, number)."""
        token = self.new_application(name)
        chat = self.new_chat(token)
        self.wait_chat(token, chat)
        return token, chat

    def new_message(self, token: str, chat: int, body: str = "hello") -> int:
        """Create a message; returns its number."""
        resp = self.post(f"/applications/{token}/chats/{chat}/messages", json={"body": body})
        assert resp.status_code == 201, resp.text
        return resp.json()["message_number"]

    def first_message_stored(self, name: str, body: str) -> str:
        """A new application with chat 1 and message 1 in it, once the writers stored the message (the whole write
        path: API, broker, both writers, MySQL); returns its token."""
        token = self.new_application(name)
        assert self.new_chat(token) == 1
        self.new_message(token, 1, body)
        self.wait_message(token, 1, 1)
        return token

    def wait_chat(self, token: str, chat: int, timeout: float = 15.0) -> dict:
        """The chat once its row is written."""

        def probe():
            resp = self.get(f"/applications/{token}/chats/{chat}")
            return resp.json() if resp.status_code == 200 else None

        return wait_for(probe, timeout, what=f"chat {chat}")

    def wait_message(self, token: str, chat: int, number: int, timeout: float = 15.0, body: str | None = None) -> dict:
        """The message once its row is written (and, if given, shows ``body``)."""

        def probe():
            resp = self.get(f"/applications/{token}/chats/{chat}/messages/{number}")
            if resp.status_code != 200:
                return None
            data = resp.json()
            return data if body is None or data["body"] == body else None

        return wait_for(probe, timeout, what=f"message {chat}/{number}")
