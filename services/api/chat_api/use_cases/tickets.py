"""Stream tickets: what lets a browser read one chat's live stream without ever holding the tenant's token.

The tenant's backend asks ``POST …/chats/{n}/stream-tickets`` (with its token) and hands the ticket to the browser,
which opens ``GET /streams/{ticket}``. A ticket is ``st1.<claims>.<signature>``:

- **claims** (base64url JSON): the digest of the token that minted it (``d``), the chat number (``c``) and when it
  stops opening streams (``x``, unix seconds; ``STREAM_TICKET_SECONDS``, default 300). An open stream is not cut at
  expiry: like a token's stream, it is re-checked against suspension and rotation while it is open.
- **signature**: HMAC-SHA256 of ``st1.<claims>`` with a deployment key (``STREAM_TICKET_KEYS``, a comma-separated
  list: the first signs, every one verifies, so a key is rotated by putting a new one first and dropping the old one
  after the longest ticket lifetime — the grace).

Verifying needs no database and no Redis: the signature and expiry are checked here, in pure code, and the tenant
rules over the token digest come from the process's tenant directory (the same cached entries as the token routes).
The digest binds the ticket to the token of the moment: a rotation makes that token the former one, and a ticket
whose token is not the current one is refused (:func:`ticket_refusal`), as is any ticket of a suspended tenant. The
digest is the one-way lookup key the database already keeps; it opens nothing by itself (the API hashes what it is
given), and the token itself never appears in a ticket.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from chat_api.model import Application, DatabaseUnavailable, NotFound, Suspended, UnknownApplication
from chat_api.ports import Repository, TenantDirectoryPort
from chat_api.use_cases.tenants import TenantGate
from chat_common.validation import MAX_NUMBER

PREFIX = "st1"
MIN_KEY_CHARS = 32
MAX_TICKET_CHARS = 512  # far above any ticket this module makes; anything longer is refused before decoding
_DIGEST_CHARS = 64  # hex SHA-256


class TicketRefused(NotFound):
    """A ticket that opens nothing (malformed, forged, expired, of a rotated-away token): 404, as an unknown token.

    ``reason`` is for metrics and logs only; the answer does not tell which (a forger learns nothing).
    """

    def __init__(self, reason: str) -> None:
        super().__init__("stream ticket not valid; ask the application's backend for a new one")
        self.reason = reason


class TicketsNotConfigured(Exception):
    """No ``STREAM_TICKET_KEYS``: this deployment serves no stream tickets (503 on the ticket routes)."""


@dataclass(frozen=True, slots=True)
class TicketClaims:
    """What a valid ticket says: which token minted it (its digest), for which chat, until when it opens."""

    token_digest: str
    chat_number: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class TicketHolder:
    """The credential of a stream opened with a ticket: the hub re-checks it (as it re-checks a token) while open."""

    token_digest: str


def parse_keys(raw: str | None) -> tuple[bytes, ...]:
    """``STREAM_TICKET_KEYS``: comma-separated keys, each at least 32 characters; none → tickets are off."""
    if not raw:
        return ()
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    short = [i for i, k in enumerate(keys) if len(k) < MIN_KEY_CHARS]
    if short:
        raise ValueError(f"STREAM_TICKET_KEYS: key {short[0] + 1} is shorter than {MIN_KEY_CHARS} characters")
    return tuple(k.encode() for k in keys)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TicketSigner:
    """Signs and verifies tickets with the deployment's keys (the first signs, all verify); no I/O."""

    def __init__(self, keys: Sequence[bytes], lifetime_seconds: int = 300, clock: Callable[[], float] = time.time):
        self.keys = tuple(keys)
        self.lifetime_seconds = lifetime_seconds
        self.clock = clock

    def require_enabled(self) -> None:
        """:class:`TicketsNotConfigured` (a 503 naming the setting) unless a key is configured."""
        if not self.keys:
            raise TicketsNotConfigured("stream tickets are not configured (STREAM_TICKET_KEYS)")

    def _mac(self, key: bytes, signed: str) -> str:
        return _b64(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest())

    def sign(self, token_digest: str, chat_number: int) -> tuple[str, int]:
        """A ticket for reading chat ``chat_number`` of the token with this digest, and when it expires (unix)."""
        self.require_enabled()
        expires_at = int(self.clock()) + self.lifetime_seconds
        claims = _b64(orjson.dumps({"d": token_digest, "c": chat_number, "x": expires_at}))
        signed = f"{PREFIX}.{claims}"
        return f"{signed}.{self._mac(self.keys[0], signed)}", expires_at

    def verify(self, ticket: str, chat_number: int | None = None) -> TicketClaims:
        """The claims of a ticket signed by any configured key, not expired (and for ``chat_number`` when given);
        :class:`TicketRefused` otherwise."""
        self.require_enabled()
        if len(ticket) > MAX_TICKET_CHARS or not ticket.isascii():
            raise TicketRefused("malformed")
        parts = ticket.split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise TicketRefused("malformed")
        signed = f"{parts[0]}.{parts[1]}"
        # Every key is tried (a handful at most) and compared in constant time: a forger learns nothing from timing.
        if not any(hmac.compare_digest(self._mac(key, signed), parts[2]) for key in self.keys):
            raise TicketRefused("forged")
        try:
            raw = orjson.loads(_unb64(parts[1]))
            claims = TicketClaims(raw["d"], raw["c"], raw["x"])
        except (binascii.Error, ValueError, orjson.JSONDecodeError, KeyError, TypeError):
            raise TicketRefused("malformed") from None  # signed by us, so only a bug could get here
        if not _well_formed(claims):
            raise TicketRefused("malformed")
        if self.clock() >= claims.expires_at:
            raise TicketRefused("expired")
        if chat_number is not None and chat_number != claims.chat_number:
            raise TicketRefused("other_chat")
        return claims


def _well_formed(claims: TicketClaims) -> bool:
    return (
        isinstance(claims.token_digest, str)
        and len(claims.token_digest) == _DIGEST_CHARS
        and isinstance(claims.chat_number, int)
        and 1 <= claims.chat_number <= MAX_NUMBER
        and isinstance(claims.expires_at, int)
    )


def ticket_refusal(token_digest: str, application: Application | None) -> tuple[str, NotFound | Suspended] | None:
    """Why a ticket minted by the token with this digest opens nothing now (reason, error), or None.

    The tenant rules of a token, stricter on rotation: only the *current* token's tickets open streams, so a
    rotation invalidates every ticket minted before it at once (the former token's grace is for the backend that
    still holds it, not for the tickets it handed out). Suspended: 403, as for the token.
    """
    if application is None:
        return "unknown", UnknownApplication()
    if token_digest != application.current_digest():
        return "rotated", TicketRefused("rotated")
    if application.suspended:
        return "suspended", Suspended("application suspended")
    return None


class StreamTickets:
    """Minting tickets (with the tenant's token) and opening streams with them (with the ticket alone)."""

    def __init__(
        self, signer: TicketSigner, gate: TenantGate, tenants: TenantDirectoryPort, repository: Repository
    ) -> None:
        self.signer = signer
        self.gate = gate
        self.tenants = tenants
        self.repository = repository

    async def mint(self, token: str, chat_number: int) -> tuple[dict, Application]:
        """A ticket for one chat of the token's application (and that application: its CORS origins): the tenant
        rules (404/403/429) and the chat's 404 as every chat route; a rotated-away token (in its grace period)
        mints nothing its tickets could open (404)."""
        self.signer.require_enabled()
        application = await self.gate.tenant(token)
        if not application.is_current(token):
            raise TicketRefused("rotated")
        await self.repository.locate(application.id, chat_number)
        ticket, expires_at = self.signer.sign(application.current_digest(), chat_number)
        return {"ticket": ticket, "chat_number": chat_number, "expires_at": expires_at}, application

    async def open(self, ticket: str, after: int | None = None) -> tuple[Application, TicketClaims, int]:
        """The application and claims of a ticket that may open its chat's stream now, and where the stream starts
        (``after``, else after the chat's newest stored message), or the refusal.

        The ticket itself costs no MySQL and no Redis in steady state: the signature here, the tenant from the
        directory's cache by digest (no rate limit either: opening a stream is bounded by the stream limits,
        minting by the tenant's rate). The chat was checked when the ticket was minted.
        """
        claims = self.signer.verify(ticket)
        application = await self.tenants.lookup_digest(claims.token_digest)
        refusal = ticket_refusal(claims.token_digest, application)
        if refusal is not None:
            raise refusal[1]
        if after is None:
            after = await self.repository.last_message_number(application.id, claims.chat_number)
        return application, claims, after

    async def standing(self, holder: TicketHolder) -> tuple[str, str] | None:
        """For open streams (the hub's re-check): ``(reason, error)`` when the ticket's token may no longer be
        served, else None (nothing cached and MySQL unreachable: the stream stays, the next round checks again)."""
        try:
            application = await self.tenants.lookup_digest(holder.token_digest)
        except DatabaseUnavailable:
            return None
        refusal = ticket_refusal(holder.token_digest, application)
        if refusal is None:
            return None
        # A rotated-away ticket's stream ends as a rotated-away token's does.
        reason = "expired_token" if refusal[0] == "rotated" else refusal[0]
        return reason, str(refusal[1])
