"""Bounded cost per request on a real API process (issue #23): header size, count and read-time limits, the
keep-alive timeout, the connection cap, and the statement time limit of reads, each answered with a clear status."""

from __future__ import annotations

import contextlib
import inspect
import socket
import time
from collections.abc import Iterator

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chat_devtools.http import Api
from chat_devtools.processes import System
from tests.conftest import own_system, seed_messages

LIMITS = {
    "API_MAX_HEADERS": "20",
    "API_HEADER_TIMEOUT_SECONDS": "1",
    "API_KEEPALIVE_SECONDS": "2",
    "API_MAX_CONNECTIONS": "40",
    "READ_STATEMENT_TIMEOUT_SECONDS": "0.02",
}


@pytest.fixture(scope="module")
def limited() -> Iterator[System]:
    with own_system("lim", api_workers=1, extra_env=LIMITS) as system:
        yield system


def _address(system: System) -> tuple[str, int]:
    return "127.0.0.1", system.port


def _exchange(system: System, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` and read until the server closes (or ``timeout``)."""
    with socket.create_connection(_address(system), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered and closed before taking it all
            sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received


def _get(headers: str = "") -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode()


def test_request_headers_are_bounded_in_size(limited):
    # 14 KB in fields the app's own per-field limit (8,190 bytes, chat_api.middleware) accepts: the total decides.
    fits = "".join(f"X-{i}: " + "a" * 7_000 + "\r\n" for i in range(2))
    assert _exchange(limited, _get(fits)).startswith(b"HTTP/1.1 200")
    began = time.monotonic()
    answer = _exchange(limited, _get("X-Big: " + "a" * (8 << 20) + "\r\n"))
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b'"error"' in answer
    assert time.monotonic() - began < 2.0
    too_big = "".join(f"X-{i}: " + "a" * 5_700 + "\r\n" for i in range(3))
    assert _exchange(limited, _get(too_big)).startswith(b"HTTP/1.1 431")


def test_request_headers_are_bounded_in_count(limited):
    assert _exchange(limited, _get("".join(f"X-{i}: v\r\n" for i in range(15)))).startswith(b"HTTP/1.1 200")
    answer = _exchange(limited, _get("".join(f"X-{i}: v\r\n" for i in range(30))))
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


def test_headers_must_arrive_in_time(limited):
    """Slowloris: a connection that says nothing, or trickles its headers, is answered 408 and closed."""
    for first in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "):
        with socket.create_connection(_address(limited), timeout=10) as sock:
            sock.sendall(first)
            began = time.monotonic()
            received = b""
            try:
                while chunk := sock.recv(4096):
                    received += chunk
                    if not first:
                        continue
                    sock.sendall(b"a")  # a byte now and then does not keep it open
                    time.sleep(0.2)
            except (ConnectionResetError, BrokenPipeError):
                pass
            assert received.startswith(b"HTTP/1.1 408"), received[:200]
            assert 0.5 < time.monotonic() - began < 5


def test_idle_keep_alive_connections_are_closed(limited):
    with socket.create_connection(_address(limited), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        began = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the server
        assert 1.5 < time.monotonic() - began < 6


def test_connections_beyond_the_cap_get_503_at_once(limited):
    held = []
    try:
        for _ in range(45):
            sock = socket.create_connection(_address(limited), timeout=10)
            held.append(sock)
        time.sleep(0.3)
        answer = _exchange(limited, _get(), timeout=5)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"retry-after: 1" in answer.lower()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert _exchange(limited, _get()).startswith(b"HTTP/1.1 200")


def test_a_read_past_the_statement_time_limit_answers_503(limited):
    """A search over a 300,000-message chat takes longer than READ_STATEMENT_TIMEOUT_SECONDS (20 ms here)."""
    api = Api(limited.base_url)
    token = api.new_application("big")
    chat = api.new_chat(token)
    api.wait_chat(token, chat)
    seed_messages(limited.namespace.settings.database_url, token, chat, 300_000)
    resp = api.get(f"/applications/{token}/chats/{chat}/messages/search", params={"query": "zq"})
    assert resp.status_code == 503, resp.text
    assert int(resp.headers["Retry-After"]) > 0 and "cheaper" in resp.json()["error"]
    # Cheap reads of the same chat still answer.
    assert api.get(f"/applications/{token}/chats/{chat}/messages", params={"after": 299_990}).status_code == 200


def test_the_uvicorn_internals_the_limits_rely_on():
    """chat_api.protocol relies on these; if uvicorn changes them, the limits must be revisited."""
    source = inspect.getsource(HttpToolsProtocol.data_received)
    assert "except httptools.HttpParserError" in source and "self.send_400_response(" in source
    assert "self.connections = server_state.connections" in inspect.getsource(HttpToolsProtocol.__init__)
    assert "self.connections.add(self)" in inspect.getsource(HttpToolsProtocol.connection_made)
    assert "self.connections.discard(self)" in inspect.getsource(HttpToolsProtocol.connection_lost)
