"""Send exact bytes over HTTP/1.1, for requests that ``requests`` would normalise or refuse to build."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class RawResponse:
    """Status, headers (lower-case names) and body of one answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def send(base_url: str, data: bytes, timeout: float = 10) -> RawResponse:
    """Send ``data`` as is on a fresh connection and read the answer until the server closes it.

    Callers include ``Connection: close`` (or send something the server answers by closing). The answer is
    read while the request is still being sent: a server refusing an oversized request answers and closes
    before reading it all, and the reset that follows would otherwise discard the answer unread.
    """
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:

        def write() -> None:
            with contextlib.suppress(OSError):  # the server may stop reading: that is its answer
                sock.sendall(data)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # unblocks a writer the server stopped reading from
        writer.join(timeout)
    raw = b"".join(chunks)
    if not raw:
        raise ConnectionResetError("the server closed the connection without an answer")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, body)


def request(
    base_url: str,
    method: str,
    target: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    content_length: bool = True,
) -> RawResponse:
    """One request with the exact request target (no dot-segment or percent normalisation)."""
    host = urlsplit(base_url).netloc
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if content_length and body:
        lines.append(f"Content-Length: {len(body)}")
    return send(base_url, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
