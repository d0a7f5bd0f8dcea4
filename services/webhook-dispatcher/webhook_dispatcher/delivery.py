"""One delivery: an HTTP POST to a tenant's endpoint, kept inside the deployment's egress rule, and what it means.

Egress (``chat_common.webhooks.egress``): the URL's scheme must be allowed; a literal address is checked as it is; a
name is resolved by :class:`CheckedResolver`, which drops every address :meth:`EgressPolicy.refusal` refuses and
refuses the name when none is left. aiohttp then connects only to the addresses it returned — the check is on the
very addresses connected to, so DNS rebinding gains nothing. Redirects are never followed, the whole exchange has a
time limit (``WEBHOOK_TIMEOUT_SECONDS``) and at most ``WEBHOOK_MAX_RESPONSE_BYTES`` of the answer's body are read
(the rest is not: the connection is dropped instead).

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
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from chat_common.webhooks.egress import EgressPolicy
from webhook_dispatcher.schedule import retry_after_seconds

USER_AGENT = "chat-system-webhooks/1"
_RETRIED_STATUSES = frozenset({408, 429})
_RETRY_AFTER_STATUSES = frozenset({429, 503})


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


class CheckedResolver(AbstractResolver):
    """Resolves with the system's resolver, then keeps only the addresses the egress rule allows."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The allowed addresses of ``host``; :class:`EgressRefused` when there is none."""
        results = await self.inner.resolve(host, port, family)
        allowed, refusals = [], []
        for result in results:
            why = self.policy.refusal(result["host"])
            if why is None:
                allowed.append(result)
            else:
                refusals.append(why)
        if not allowed:
            raise EgressRefused(f"{host} resolves to no allowed address ({'; '.join(refusals) or 'none'})")
        return allowed

    async def close(self) -> None:
        """Close the inner resolver."""
        await self.inner.close()


class Sender:
    """POSTs deliveries through one connection pool (at most ``per_host`` connections to one host and port)."""

    def __init__(self, policy: EgressPolicy, timeout: float, max_response_bytes: int, per_host: int) -> None:
        self.policy = policy
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.per_host = per_host
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made inside the running loop, on first use
            connector = aiohttp.TCPConnector(
                resolver=CheckedResolver(self.policy), limit=0, limit_per_host=self.per_host, ttl_dns_cache=10
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": USER_AGENT},
                trust_env=False,  # no proxy from the environment: the egress rule is about where we connect
            )
        return self._session

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

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Attempt:
        """One delivery of ``body``; never raises for what the receiver or the network does."""
        if why := self.refusal(url):
            return Attempt(Outcome.REFUSED, error=f"refused: {why}")
        try:
            async with self._client().post(
                url, data=body, headers={**headers, "Content-Type": "application/json"}, allow_redirects=False
            ) as response:
                await self._drain(response)
                return classify(response.status, response.headers.get("Retry-After"), _now())
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, EgressRefused) or isinstance(exc.__cause__, EgressRefused):
                return Attempt(Outcome.REFUSED, error=f"refused: {exc.os_error}")
            return Attempt(Outcome.RETRY, error=f"cannot connect: {type(exc.os_error).__name__}")
        except aiohttp.InvalidURL:
            return Attempt(Outcome.REFUSED, error="refused: the URL's host is not a canonical address or name")
        except TimeoutError:
            return Attempt(Outcome.RETRY, error=f"no answer within {self.timeout:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(Outcome.RETRY, error=f"network error: {type(exc).__name__}")

    async def _drain(self, response: aiohttp.ClientResponse) -> None:
        """Read at most the limit of the body (so the connection may be reused); drop the connection past it."""
        left = self.max_response_bytes
        while left > 0:
            chunk = await response.content.read(min(left, 16384))
            if not chunk:
                return
            left -= len(chunk)
        if not response.content.at_eof():
            response.close()  # a receiver sending more than the limit does not get it read

    async def close(self) -> None:
        """Close the connection pool (on shutdown)."""
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)  # let the connector close its transports


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
