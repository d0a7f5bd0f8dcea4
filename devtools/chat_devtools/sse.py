"""A Server-Sent Events client for tests and benchmarks: plain HTTP/1.1 over a socket, on a thread.

Written against the socket rather than an HTTP library so that a test controls everything a real client might do:
send ``Last-Event-ID``, stop reading (a slow client), see exactly when the server ends the response (a clean end
is the chunked terminator; an abort is a reset or EOF without it), and record when each event arrived.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson


@dataclass
class Event:
    """One SSE event as received: ``event`` name, ``id`` (or None), parsed JSON ``data``, arrival time."""

    event: str
    id: str | None
    data: object
    at: float


@dataclass
class Listener:
    """One stream, read on a thread of its own (``start``); events accumulate in ``events``."""

    url: str
    last_event_id: str | None = None
    request_headers: dict[str, str] = field(default_factory=dict)  # more request headers (e.g. Origin)
    read: bool = True  # False: never read the body (a client that stalls); see ``stall_buffer``
    stall_buffer: int = 4096  # receive buffer of a stalled client, so the server's writes back up quickly
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    blocks: list[bytes] = field(default_factory=list)  # every block as sent (between blank lines), in order
    comments: int = 0
    retry_ms: int | None = None
    ended: str = ""  # "clean" (terminating chunk), "reset" (connection aborted or EOF mid-body), "closed" (by us)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self, timeout: float = 10.0) -> Listener:
        """Connect, send the request and wait for the response head."""
        parts = urlsplit(self.url)
        self._sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        if not self.read:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.stall_buffer)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        head = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
        if self.last_event_id is not None:
            head += f"Last-Event-ID: {self.last_event_id}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in self.request_headers.items())
        self._sock.sendall((head + "\r\n").encode())
        self._buffer = b""
        self._head_read = threading.Event()
        if not self.read:
            return self
        self._sock.settimeout(None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._head_read.wait(timeout):
            raise TimeoutError(f"no response head from {self.url}")
        return self

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the connection (a client going away)."""
        if not self.ended:
            self.ended = "closed"
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self.done.set()

    # -- reading ---------------------------------------------------------------------------------------------
    def _recv(self) -> bytes:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("EOF")
        return chunk

    def _until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._buffer += self._recv()
        line, _, self._buffer = self._buffer.partition(marker)
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._buffer += self._recv()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _run(self) -> None:
        text = b""
        try:
            head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
            self.status = int(head[0].split()[1])
            self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            self._head_read.set()
            if self.headers.get("transfer-encoding") != "chunked":
                length = int(self.headers.get("content-length", "0"))
                self.body = self._exactly(length)
                self.ended = "clean"
                return
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self.ended = "clean"
                    return
                text += self._exactly(size)
                self._exactly(2)
                *blocks, text = text.split(b"\n\n")
                for block in blocks:
                    self._parse(block)
        except OSError:
            self.ended = self.ended or "reset"
        finally:
            self._head_read.set()
            self.done.set()

    def _parse(self, block: bytes) -> None:
        self.blocks.append(block)
        fields: dict[str, str] = {}
        for line in block.decode().split("\n"):
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if "retry" in fields:
            self.retry_ms = int(fields["retry"])
        if "data" in fields:
            self.events.append(
                Event(fields.get("event", "message"), fields.get("id"), orjson.loads(fields["data"]), time.time())
            )

    # -- for assertions --------------------------------------------------------------------------------------
    def numbers(self) -> list[int]:
        """Message numbers of the ``message`` events so far, in arrival order."""
        return [e.data["message_number"] for e in list(self.events) if e.event == "message"]

    @property
    def last_id(self) -> str | None:
        """What an EventSource would send back as ``Last-Event-ID``."""
        ids = [e.id for e in list(self.events) if e.id is not None]
        return ids[-1] if ids else self.last_event_id

    def wait_until(self, predicate, timeout: float = 20.0, what: str = "events") -> None:
        """Until ``predicate(self)`` holds; AssertionError with what arrived otherwise."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got {self.numbers()} ended={self.ended!r}")
            time.sleep(0.02)

    def wait_numbers(self, expected: list[int], timeout: float = 20.0) -> None:
        """Until at least ``len(expected)`` messages arrived; then they must be exactly ``expected``."""
        self.wait_until(lambda s: len(s.numbers()) >= len(expected) or s.done.is_set(), timeout, f"{expected}")
        assert self.numbers() == expected, f"got {self.numbers()}, expected {expected} (ended={self.ended!r})"


def stream_url(base_url: str, token: str, chat: int, after: int | None = None) -> str:
    """The stream route of one chat."""
    query = "" if after is None else f"?after={after}"
    return f"{base_url}/applications/{token}/chats/{chat}/messages/stream{query}"
