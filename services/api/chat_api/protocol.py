"""uvicorn's httptools protocol with the limits an API process needs against hostile clients (issue #23).

uvicorn has none of these for its httptools parser (``h11_max_incomplete_event_size`` is for h11 only, which costs
~2x the CPU per request here): httptools accepted a 10 MiB request header (~1 s of CPU: httptools joins each header
value's pieces as they arrive), an idle connection that never sends its headers was kept forever, and connections
were accepted without bound. So, per connection and per process:

- **header size** (``API_MAX_HEADER_BYTES``, default 16 KiB, uvicorn's own h11 default): a request whose line and
  headers are not complete after that many bytes is answered **431** and closed, before the parser sees more;
- **header count** (``API_MAX_HEADERS``, default 100, as Python's ``http.client``): one more header is **431**;
- **header-read timeout** (``API_HEADER_TIMEOUT_SECONDS``, default 10): the request line and headers must arrive
  within that time of the connection (or of the request's first byte on a kept-alive one), else **408** and close
  (slowloris). Bodies are bounded separately (``MAX_REQUEST_BYTES``); idle kept-alive connections by uvicorn's
  ``timeout_keep_alive`` (``API_KEEPALIVE_SECONDS``);
- **connections per process** (``API_MAX_CONNECTIONS``, default 5,000: the 4,000 live streams a process may hold and
  room for requests): one more is answered **503** with ``Retry-After`` at once and closed, before anything is read.
  uvicorn's ``limit_concurrency`` would answer 503 only after parsing the request's headers, and counts the same.

Relies on two uvicorn internals, pinned by ``tests/unit/test_protocol_limits.py``: ``data_received`` hands parser
errors to ``send_400_response`` (our 431 for too many headers goes that way), and ``self.connections`` is the
process's set of open connections.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chat_common.config import Settings


class HeaderLimitExceeded(Exception):
    """Raised from a parser callback: the parser stops, and :meth:`LimitedHttpToolsProtocol.send_400_response`
    answers 431 instead of 400."""


def _response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n"
        + extra
        + b"\r\n"
        + body
    )


TOO_LARGE = _response(
    b"431 Request Header Fields Too Large",
    b'{"error": "request line and headers too large, or too many headers"}',
)
TIMEOUT = _response(b"408 Request Timeout", b'{"error": "request headers not received in time"}')
BUSY = _response(
    b"503 Service Unavailable",
    b'{"error": "too many connections to this API process; retry shortly"}',
    b"retry-after: 1\r\n",
)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with header size, header count, header-read time and connection limits."""

    max_header_bytes = Settings.api_max_header_bytes
    max_headers = Settings.api_max_headers
    header_timeout = Settings.api_header_timeout_seconds
    max_connections = Settings.api_max_connections

    @classmethod
    def configured(cls, settings: Settings) -> type[LimitedHttpToolsProtocol]:
        """This protocol with the limits of a running configuration (uvicorn takes a class, not an instance)."""
        return type(
            cls.__name__,
            (cls,),
            {
                "max_header_bytes": settings.api_max_header_bytes,
                "max_headers": settings.api_max_headers,
                "header_timeout": settings.api_header_timeout_seconds,
                "max_connections": settings.api_max_connections,
            },
        )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True  # between a request's first byte (or the connection) and its last header
        self._header_bytes = 0
        self._header_count = 0
        self._header_size = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._too_large = False

    # -- connections ----------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # noqa: D102
        if len(self.connections) >= self.max_connections:
            self.transport = transport
            self._refused = True
            transport.write(BUSY)
            transport.close()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self._disarm_header_timer()
        if self._refused and self.flow is None:  # refused at connection_made: uvicorn never set it up
            self.connections.discard(self)
            return
        super().connection_lost(exc)

    # -- header size, count and time ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:  # noqa: D102
        if self._refused:
            return
        if self._awaiting_headers:
            if self._header_bytes > self.max_header_bytes:  # every byte fed so far was request line and headers
                self._refuse(TOO_LARGE)
                return
            self._header_bytes += len(data)
            if self._header_timer is None:
                self._arm_header_timer()
        super().data_received(data)

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102
        self._header_count += 1
        self._header_size += len(name) + len(value) + 4  # "name: value\r\n"
        if self._header_count > self.max_headers:
            self._too_large = True
            raise HeaderLimitExceeded()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:  # noqa: D102
        self._awaiting_headers = False
        self._disarm_header_timer()
        # Exact: the check in data_received only bounds the parser's work (a chunk may carry the limit's last bytes
        # and more); this one counts the request line and the headers themselves.
        if len(self.url) + 16 + self._header_size > self.max_header_bytes:
            self._too_large = True
            raise HeaderLimitExceeded()
        super().on_headers_complete()

    def on_message_complete(self) -> None:  # noqa: D102
        super().on_message_complete()
        # The next request on this connection starts counting (and its timer) at its first byte.
        self._awaiting_headers = True
        self._header_bytes = 0
        self._header_count = 0
        self._header_size = 0

    def send_400_response(self, msg: str) -> None:  # noqa: D102
        if self._too_large:
            self._refuse(TOO_LARGE)
        else:
            super().send_400_response(msg)

    def _refuse(self, response: bytes) -> None:
        self._refused = True
        self._disarm_header_timer()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def _arm_header_timer(self) -> None:
        if self.header_timeout > 0:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and (self.cycle is None or self.cycle.response_complete):
            self._refuse(TIMEOUT)
