"""One delivery: an HTTP POST to a tenant's endpoint, kept inside the deployment's egress rule, and what it means.

Egress (``chat_common.webhooks.egress``): the URL's scheme must be allowed; a literal address is checked as it is; a
name is resolved by :class:`CheckedResolver`, which drops every address :meth:`EgressPolicy.refusal` refuses and
refuses the name when none is left. The sender then connects only to the addresses it returned — the check is on the
very addresses connected to, so DNS rebinding gains nothing (over TLS the certificate is still verified against the
name). Redirects are never followed, the whole exchange has a time limit (``WEBHOOK_TIMEOUT_SECONDS``) and at most
``WEBHOOK_MAX_RESPONSE_BYTES`` of the answer's body are read (the rest is not: the connection is dropped instead).

The HTTP client is a small one of our own (:class:`Sender`): HTTP/1.1 over asyncio transports, answers parsed by
httptools (llhttp, the parser uvicorn uses), a keep-alive pool per scheme, host and port. Why not aiohttp's client:
one delivery cost the dispatcher ~173 µs of CPU, mostly aiohttp's general-purpose client path (sessions, cookie jar,
tracing, multidicts, stream readers), which a dispatcher that POSTs small signed bodies to known hosts never needs;
at the bench's create rates that CPU was what kept deliveries behind on 2 cores.

What an answer means (:func:`classify`):

- 2xx: delivered.
- 410 Gone: the receiver says the endpoint is no more; it is disabled.
- 408, 429, 5xx, a network error or the time limit: tried again later (429 and 503 honour ``Retry-After``).
- Any other 4xx, a 3xx (a redirect is not followed) or 1xx: failed; that event is given up, not retried (the same
  request would get the same answer).
- Refused by the egress rule: nothing was sent; the event is given up too (``refused``).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypedDict
from urllib.parse import quote, urlsplit

import httptools

from chat_common.webhooks.egress import EgressPolicy
from webhook_dispatcher.schedule import retry_after_seconds

USER_AGENT = "chat-system-webhooks/1"
_RETRIED_STATUSES = frozenset({408, 429})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
DNS_CACHE_SECONDS = 10.0  # as aiohttp's ttl_dns_cache was: a rebinding name is re-checked at least this often
_MAX_HEAD_BYTES = 65536  # an answer's status line and headers (aiohttp allowed ~8 KiB per line)
_OWN_HEADERS = frozenset({"host", "content-type", "user-agent", "content-length", "connection", "transfer-encoding"})
_TARGETS_CACHED = 4096  # parsed URLs kept (an endpoint's URL is posted to again and again)


class Outcome(StrEnum):
    """What one attempt came to (module docstring)."""

    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    GONE = "gone"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt's outcome; ``error`` says why it did not deliver (no URL, no secret: safe to store and log)."""

    outcome: Outcome
    status: int | None = None
    error: str = ""
    retry_after: float | None = None  # seconds the receiver asked to wait (429/503), capped


def classify(status: int, retry_after: str | None, now: datetime.datetime) -> Attempt:
    """What an HTTP answer with ``status`` (and its ``Retry-After`` header) means for the delivery."""
    if 200 <= status < 300:
        return Attempt(Outcome.DELIVERED, status)
    if status == 410:
        return Attempt(Outcome.GONE, status, "410 Gone")
    if status in _RETRIED_STATUSES or status >= 500:
        wait = retry_after_seconds(retry_after, now) if status in _RETRY_AFTER_STATUSES else None
        return Attempt(Outcome.RETRY, status, f"HTTP {status}", wait)
    return Attempt(Outcome.FAILED, status, f"HTTP {status}" + (" (redirects are not followed)" if status < 400 else ""))


class EgressRefused(OSError):
    """A name none of whose addresses the egress rule allows (raised by :class:`CheckedResolver`)."""


class ResolveResult(TypedDict):
    """One resolved address (the shape aiohttp's resolvers used, so resolvers stay interchangeable)."""

    hostname: str
    host: str
    port: int
    family: int
    proto: int
    flags: int


class Resolver(Protocol):
    """Resolves a name to its addresses (the system's resolver; a fixed one in tests)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[ResolveResult]:
        """Every address of ``host``."""
        ...

    async def close(self) -> None:
        """Release what the resolver holds."""
        ...


class SystemResolver:
    """``loop.getaddrinfo`` (the system's resolver, in the loop's thread pool)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[ResolveResult]:
        """Every TCP address of ``host``."""
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        return [
            ResolveResult(hostname=host, host=str(addr[0]), port=port, family=fam, proto=proto, flags=0)
            for fam, _, proto, _, addr in infos
        ]

    async def close(self) -> None:
        """Nothing to release."""


class CheckedResolver:
    """Resolves with the system's resolver, then keeps only the addresses the egress rule allows.

    Answers (refusals too) are kept :data:`DNS_CACHE_SECONDS` per host and port: a resolution per delivery would cost
    a thread-pool round trip each time.
    """

    def __init__(self, policy: EgressPolicy, inner: Resolver | None = None, ttl: float = DNS_CACHE_SECONDS) -> None:
        self.policy = policy
        self.inner = inner or SystemResolver()
        self.ttl = ttl
        self._cache: dict[tuple[str, int], tuple[float, list[ResolveResult] | EgressRefused]] = {}

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[ResolveResult]:
        """The allowed addresses of ``host``; :class:`EgressRefused` when there is none."""
        key = (host, port)
        cached = self._cache.get(key)
        if cached is None or cached[0] <= time.monotonic():
            cached = (time.monotonic() + self.ttl, await self._checked(host, port, family))
            self._cache[key] = cached
        if isinstance(cached[1], EgressRefused):
            raise EgressRefused(*cached[1].args)
        return cached[1]

    async def _checked(self, host: str, port: int, family: int) -> list[ResolveResult] | EgressRefused:
        results = await self.inner.resolve(host, port, family)
        allowed, refusals = [], []
        for result in results:
            why = self.policy.refusal(result["host"])
            if why is None:
                allowed.append(result)
            else:
                refusals.append(why)
        if not allowed:
            return EgressRefused(f"{host} resolves to no allowed address ({'; '.join(refusals) or 'none'})")
        return allowed

    async def close(self) -> None:
        """Close the inner resolver."""
        await self.inner.close()


class _Disconnected(ConnectionError):
    """The receiver closed the connection before its answer was complete."""


class _BadAnswer(OSError):
    """The receiver's answer is not HTTP/1.1 as llhttp reads it (or its head is too large)."""


class _ConnectFailed(OSError):
    """No allowed address of the receiver took the connection (``__cause__``: the last error)."""


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL, parsed once: where to connect and what to send in the request line and Host header."""

    scheme: str
    host: str  # as in the URL (a name, or a literal address without brackets)
    port: int
    literal: bool  # the host is an address (checked by :meth:`Sender.refusal`, connected to as it is)
    head: bytes  # "POST <target> HTTP/1.1\r\nHost: ...\r\n"


class _Connection(asyncio.Protocol):
    """One kept-alive connection to a receiver; parses one answer at a time with httptools (its callbacks below)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._answer: asyncio.Future[None] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._limit = 0
        self.received = False  # any byte of the current answer
        self.status = 0
        self.retry_after: str | None = None
        self.keep_alive = False
        self.oversized = False
        self._framed = False  # a Content-Length or Transfer-Encoding: the end is known without the connection closing
        self._head_done = False
        self._complete = False
        self._head_bytes = 0
        self._body_bytes = 0

    # -- transport side ---------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        """An answer delimited by the close ends here; any other one in progress failed."""
        self.closed = True
        answer = self._answer
        if answer is not None and not answer.done():
            if self._head_done and not self._framed:
                answer.set_result(None)
            else:
                answer.set_exception(_Disconnected("the receiver closed the connection"))

    def data_received(self, data: bytes) -> None:
        """Feed the answer to the parser; bytes nobody asked for make the connection unusable."""
        answer = self._answer
        if answer is None or answer.done() or self._parser is None:
            self.drop()  # unsolicited bytes (or past the answer): the connection's state is unknown
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if not answer.done():  # a 101: its status is all that is read
                answer.set_result(None)
            self.keep_alive = False
        except httptools.HttpParserError as exc:
            if not answer.done():
                answer.set_exception(_BadAnswer(str(exc)))
            self.keep_alive = False  # trailing bytes after the answer: not reusable
            return
        if not self._head_done:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES and not answer.done():
                answer.set_exception(_BadAnswer("the answer's head is too large"))

    def exchange(self, request: bytes, limit: int) -> asyncio.Future[None]:
        """Send ``request`` (one write); the future is done when the answer's status and headers are known and its
        body is complete, past ``limit`` (``oversized``) or ended by the close."""
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._limit = limit
        self.received = self.oversized = self._framed = self._head_done = self._complete = self.keep_alive = False
        self.status, self.retry_after, self._head_bytes, self._body_bytes = 0, None, 0, 0
        self.transport.write(request)
        return self._answer

    def finished(self) -> None:
        """The answer was taken; the next bytes would be unsolicited."""
        self._answer = None
        self._parser = None

    def reusable(self) -> bool:
        """Whether the connection may carry the next request."""
        return not self.closed and self.keep_alive and not self.oversized and not self.transport.is_closing()  # type: ignore[union-attr]

    def drop(self) -> None:
        """Close without ceremony (an error, a body beyond the limit, ``Connection: close``)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- httptools callbacks ----------------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep what the sender needs: ``Retry-After``, and whether the body is framed."""
        if self._complete:
            return  # a second answer nobody asked for (see on_headers_complete)
        lower = name.lower()
        if lower == b"retry-after":
            self.retry_after = value.decode("latin-1").strip()
        elif lower in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        """The status is known; so is whether the receiver keeps the connection open."""
        assert self._parser is not None
        if self._complete:  # bytes past the answer, parsed as another one: the connection is not to be trusted
            self.keep_alive = False
            return
        self._head_done = True
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        """Count the body; past the limit the answer is over for us (the connection is then dropped)."""
        self._body_bytes += len(body)
        if self._body_bytes > self._limit:
            self.oversized = True
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(None)

    def on_message_complete(self) -> None:
        """The whole answer is in."""
        self._complete = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(None)


class _HostPool:
    """The connections to one scheme, host and port: at most ``per_host`` in use or idle, the idle ones reused."""

    def __init__(self, per_host: int, every: set[_Connection]) -> None:
        self.slots = asyncio.Semaphore(per_host)
        self.idle: list[_Connection] = []
        self._every = every  # the sender's open connections (closed on shutdown)

    def take_idle(self) -> _Connection | None:
        """The most recently used idle connection still open (the least likely to have been closed by the peer)."""
        while self.idle:
            connection = self.idle.pop()
            if connection.reusable():
                return connection
            connection.drop()
            self._every.discard(connection)
        return None


class Sender:
    """POSTs deliveries through one connection pool (at most ``per_host`` connections to one host and port).

    ``ssl_context`` is for tests (a receiver with a certificate of their own); by default the system's trust store
    verifies the receiver's certificate against the URL's host name.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        timeout: float,
        max_response_bytes: int,
        per_host: int,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.per_host = per_host
        self._ssl_context = ssl_context
        self.resolver = CheckedResolver(policy, resolver)
        self._pools: dict[tuple[str, str, int], _HostPool] = {}
        self._connections: set[_Connection] = set()
        self._targets: dict[str, _Target | str] = {}

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be posted to, from what needs no DNS (scheme, literal address); None: go on."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            return "the URL does not parse"
        if parts.scheme != "https" and not (parts.scheme == "http" and self.policy.allow_http):
            return f"scheme {parts.scheme or '(none)'} is not allowed"
        if not host:
            return "the URL has no host"
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return None  # a name: the resolver checks what it resolves to
        return self.policy.refusal(literal)

    def _target(self, url: str) -> _Target | str:
        """``url`` parsed and checked once (a refusal's text when it may not be posted to)."""
        target = self._targets.get(url)
        if target is None:
            target = self._parse(url)
            if len(self._targets) >= _TARGETS_CACHED:
                self._targets.clear()
            self._targets[url] = target
        return target

    def _parse(self, url: str) -> _Target | str:
        if why := self.refusal(url):
            return f"refused: {why}"
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
        except (ValueError, UnicodeError):
            return "refused: the URL's host is not a canonical address or name"
        if any(c <= " " or c in "/\\@#?" for c in ascii_host.replace(":", "")):
            return "refused: the URL's host is not a canonical address or name"
        try:
            ipaddress.ip_address(host)
            literal = True
        except ValueError:
            literal = False
        # A raw space or control character would break the request line: percent-encode it (what yarl did).
        path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~-._")
        if parts.query:
            path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=~-._?")
        authority = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
        if port != (443 if parts.scheme == "https" else 80):
            authority += f":{port}"
        head = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")
        return _Target(parts.scheme, ascii_host, port, literal, head)

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Attempt:
        """One delivery of ``body``; never raises for what the receiver or the network does."""
        target = self._target(url)
        if isinstance(target, str):
            return Attempt(Outcome.REFUSED, error=target)
        lines = [target.head]
        for name, value in headers.items():
            if name.lower() not in _OWN_HEADERS:
                lines.append(f"{name}: {value}\r\n".encode())
        lines.append(
            b"Content-Type: application/json\r\nUser-Agent: %s\r\nContent-Length: %d\r\n\r\n"
            % (USER_AGENT.encode(), len(body))
        )
        lines.append(body)
        request = b"".join(lines)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._deliver(target, request)
        except EgressRefused as exc:
            return Attempt(Outcome.REFUSED, error=f"refused: {exc}")
        except _ConnectFailed as exc:
            return Attempt(Outcome.RETRY, error=f"cannot connect: {_name(exc.__cause__ or exc)}")
        except TimeoutError:
            return Attempt(Outcome.RETRY, error=f"no answer within {self.timeout:g} s")
        except OSError as exc:
            return Attempt(Outcome.RETRY, error=f"network error: {_name(exc)}")

    async def _deliver(self, target: _Target, request: bytes) -> Attempt:
        key = (target.scheme, target.host, target.port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _HostPool(self.per_host, self._connections)
        async with pool.slots:
            connection = pool.take_idle()
            if connection is not None:
                try:
                    return await self._exchange(pool, connection, request)
                except _Disconnected:
                    if connection.received:
                        raise
                    # The keep-alive race: the receiver closed the idle connection as we wrote. Nothing of an answer
                    # came, so the request is sent once more, on a fresh connection.
            connection = await self._connect(target)
            return await self._exchange(pool, connection, request)

    async def _exchange(self, pool: _HostPool, connection: _Connection, request: bytes) -> Attempt:
        """Send ``request`` and read the answer; the connection goes back idle only after a clean, complete one."""
        clean = False
        try:
            if connection.closed:
                raise _Disconnected("the receiver closed the connection")
            await connection.exchange(request, self.max_response_bytes)
            clean = connection.reusable()
            return classify(connection.status, connection.retry_after, _now())
        finally:
            connection.finished()
            if clean:
                pool.idle.append(connection)
            else:
                connection.drop()
                self._connections.discard(connection)

    async def _connect(self, target: _Target) -> _Connection:
        """A new connection to the first allowed address of the target that takes it."""
        if target.literal:
            addresses = [target.host]
        else:
            try:
                addresses = [r["host"] for r in await self.resolver.resolve(target.host, target.port)]
            except EgressRefused:
                raise
            except OSError as exc:  # the name does not resolve
                raise _ConnectFailed("the name does not resolve") from exc
        tls = self._tls() if target.scheme == "https" else None
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for address in addresses:
            factory: Callable[[], _Connection] = _Connection
            try:
                _, connection = await loop.create_connection(
                    factory, address, target.port, ssl=tls, server_hostname=target.host if tls else None
                )
            except OSError as exc:
                last = exc
                continue
            self._connections.add(connection)
            return connection
        raise _ConnectFailed("no address took the connection") from last

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:  # made once: a context costs milliseconds to build
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def close(self) -> None:
        """Close the connection pool (on shutdown)."""
        for connection in self._connections:
            connection.drop()
        self._connections.clear()
        self._pools.clear()
        await self.resolver.close()
        await asyncio.sleep(0)  # let the transports close


def _name(exc: BaseException) -> str:
    return type(exc).__name__.lstrip("_")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
