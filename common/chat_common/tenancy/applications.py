"""The application (tenant) lifecycle: create, find, rename, delete, suspend, rotate its token, set its limits,
report its usage — one implementation for the API's admin endpoints and the operator.

Applications are written to MySQL synchronously (they are rare, and their token must work at once);
chats and messages go through the queues. Deleting removes rows in bounded batches, the numbering
counters in Redis, and whatever the registered cleanups remove (search documents).

Tenant management (migration 0003): a suspended application keeps everything but its tokens answer 403; a
rotation gives it a new token and keeps the former one valid for a grace period (then 404) — chats, messages,
numbering (keyed by application id) and search documents stay with the application; limits override the
deployment's defaults.

Tokens at rest (migration 0006, :mod:`chat_common.tenancy.tokens`): rows hold the SHA-256 digest of each token, which
every lookup uses, and a sealed copy (AES-GCM, key outside the database) for the few answers that must show a token
again; the plaintext columns are NULL for every token written since, and erased for older ones by the rollout's last
step. An :class:`Application` carries a token's plaintext only where it is known: given by the caller, just drawn, or
unsealed. The API enforces all of it from a per-process cache of :data:`TENANT_BY_TOKEN` rows
(``chat_api.adapters.tenants``), so a change here is in force on every API process within that cache's bound.
"""

from __future__ import annotations

import datetime
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import redis
from sqlalchemy import Engine, Select, and_, bindparam, case, func, literal_column, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from chat_common.schema.tables import applications, chats, events, messages
from chat_common.tenancy.tokens import TokenSealer, token_digest
from chat_common.validation import NAME_MAX_CHARS, Invalid, clean_name
from chat_common.wire.idempotency import KeyReused, check_idempotency_key
from chat_common.wire.keys import RedisKeys

log = logging.getLogger(__name__)

TOKEN_BYTES = 24  # 192 bits from the OS CSPRNG, 32 URL-safe characters
# What any token can look like: anything else names no application (and must not reach an ASCII column).
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_token() -> str:
    """An unguessable application token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


MAX_LIMIT = 4_294_967_295  # limits are unsigned 32-bit columns
DEFAULT_GRACE_SECONDS = 86_400
MAX_GRACE_SECONDS = 30 * 86_400
LIMIT_FIELDS = ("requests_per_second", "max_chats", "max_message_bytes")


def rfc3339(unix: float | None) -> str | None:
    """A unix time as an RFC 3339 UTC timestamp (seconds), as Kubernetes and the admin API show times."""
    if unix is None:
        return None
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _whole(value: object) -> object:
    """A whole number as an int: a JSON number without a fraction (``5.0`` is the integer 5 to JSON Schema, so to
    the OpenAPI document), or digits (form bodies carry strings); anything else as it came."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value


def check_grace_seconds(value: object) -> int:
    """How long a rotated-away token keeps working: an integer from 0 to 30 days; :class:`Invalid` otherwise."""
    value = _whole(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GRACE_SECONDS:
        raise Invalid(f"grace_seconds must be an integer from 0 to {MAX_GRACE_SECONDS}")
    return value


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """Per-tenant limits; None means the deployment's default (``RATE_LIMIT_PER_SECOND``) or no limit."""

    requests_per_second: int | None = None
    max_chats: int | None = None
    max_message_bytes: int | None = None

    @classmethod
    def parse(cls, value: object) -> TenantLimits:
        """Limits from a JSON object with any of :data:`LIMIT_FIELDS` (null clears one); :class:`Invalid` else."""
        if not isinstance(value, Mapping):
            raise Invalid("limits must be an object")
        unknown = sorted(set(value) - set(LIMIT_FIELDS))
        if unknown:
            raise Invalid(f"unknown limit {unknown[0]!r}; the limits are {', '.join(LIMIT_FIELDS)}")
        parsed = []
        for name in LIMIT_FIELDS:
            given = value.get(name)
            given = None if given == "" else _whole(given)  # form bodies send an empty string for the default
            if given is not None and (
                isinstance(given, bool) or not isinstance(given, int) or not 1 <= given <= MAX_LIMIT
            ):
                raise Invalid(f"{name} must be an integer from 1 to {MAX_LIMIT}, or null for the default")
            parsed.append(given)
        return cls(*parsed)

    def public(self) -> dict:
        """The JSON shape of limits (null: the default)."""
        return {name: getattr(self, name) for name in LIMIT_FIELDS}


@dataclass(frozen=True, slots=True)
class Application:
    """An application; ``id`` is internal and never leaves the server. Times are unix seconds.

    ``token`` / ``previous_token``: the plaintext where known (None otherwise: the database keeps digests);
    ``token_digest`` / ``previous_token_digest``: what identifies them (computed from the plaintext when not given).
    """

    token: str | None
    name: str
    chats_count: int
    id: int = 0
    suspended: bool = False
    previous_token: str | None = None
    previous_token_expires_at: float | None = None
    token_rotated_at: float | None = None
    token_generation: int = 0
    limits: TenantLimits = field(default_factory=TenantLimits)
    last_activity_at: float | None = None
    token_digest: str | None = None
    previous_token_digest: str | None = None
    cors_origins: tuple[str, ...] | None = None  # None: the deployment's CORS_ALLOWED_ORIGINS

    def current_digest(self) -> str:
        """The digest of the current token."""
        if self.token_digest:
            return self.token_digest
        assert self.token is not None, "an application needs its token or its digest"
        return token_digest(self.token)

    def previous_digest(self) -> str | None:
        """The digest of the former token (None: no rotation kept one)."""
        if self.previous_token_digest:
            return self.previous_token_digest
        return token_digest(self.previous_token) if self.previous_token else None

    def is_current(self, token: str) -> bool:
        """Whether ``token`` is the current token (compared by digest: the plaintext may be unknown here)."""
        return token_digest(token) == self.current_digest()

    def knowing(self, token: str) -> Application:
        """The application with ``token``'s plaintext filled in where it is one of its tokens and was unknown."""
        digest = token_digest(token)
        if self.token is None and digest == self.current_digest():
            return replace(self, token=token, token_digest=digest)
        if self.previous_token is None and digest == self.previous_digest():
            return replace(self, previous_token=token, previous_token_digest=digest)
        return self

    def public(self) -> dict:
        """The JSON shape of an application."""
        return {"token": self.token, "name": self.name, "chats_count": self.chats_count}

    def seen_with(self, token: str) -> Application:
        """The application as a caller holding ``token`` may see it: a former token never shows the current one.

        Whoever still holds a rotated-away token (during its grace period) may be whoever leaked it, so the
        application read or renamed through it shows that same former token, and no rotation state.
        """
        current = self.current_digest()
        if token_digest(token) == current:
            return replace(self, token=token, token_digest=current)
        return replace(
            self,
            token=token,
            token_digest=current,
            previous_token=None,
            previous_token_digest=None,
            previous_token_expires_at=None,
        )

    def previous_token_valid(self, now: float) -> bool:
        """Whether the former token still works (its grace period has not ended)."""
        return (
            self.previous_digest() is not None
            and self.previous_token_expires_at is not None
            and now < self.previous_token_expires_at
        )

    def admin(self, now: float | None = None) -> dict:
        """The JSON shape of an application for the admin endpoints: state, limits and token rotation."""
        now = time.time() if now is None else now
        valid = self.previous_token_valid(now)
        return {
            **self.public(),
            "state": "suspended" if self.suspended else "active",
            "suspended": self.suspended,
            "limits": self.limits.public(),
            "token_rotated_at": rfc3339(self.token_rotated_at),
            "token_generation": self.token_generation,
            "previous_token_expires_at": rfc3339(self.previous_token_expires_at) if valid else None,
            "cors_origins": list(self.cors_origins) if self.cors_origins is not None else None,
        }


@dataclass(frozen=True, slots=True)
class Usage:
    """What a tenant uses: counts as of the last count sync, last create or edit, state."""

    chats: int
    messages: int
    last_activity_at: float | None
    suspended: bool

    def public(self) -> dict:
        """The JSON shape of usage."""
        return {
            "chats": self.chats,
            "messages": self.messages,
            "last_activity_at": rfc3339(self.last_activity_at),
            "state": "suspended" if self.suspended else "active",
        }


def _unix(column):
    # Stored and compared in the session's time zone by NOW(6); UNIX_TIMESTAMP reads them back the same way.
    return func.unix_timestamp(column).label(column.name)


_COLUMNS = (
    applications.c.id,
    applications.c.token,
    applications.c.token_digest,
    applications.c.token_sealed,
    applications.c.name,
    applications.c.chats_count,
    applications.c.suspended,
    applications.c.previous_token,
    applications.c.previous_token_digest,
    applications.c.previous_token_sealed,
    _unix(applications.c.previous_token_expires_at),
    _unix(applications.c.token_rotated_at),
    applications.c.token_generation,
    applications.c.requests_per_second,
    applications.c.max_chats,
    applications.c.max_message_bytes,
    _unix(applications.c.last_activity_at),
    applications.c.cors_origins,
)
_PREVIOUS_VALID = applications.c.previous_token_expires_at > func.now(6)


def _by_digest(digest):
    """Rows a token's digest names: its current token, or its former one during the grace period."""
    return or_(
        applications.c.token_digest == digest, and_(applications.c.previous_token_digest == digest, _PREVIOUS_VALID)
    )


# What the API's tenant directory runs on a cache miss, with ``digest`` = token_digest(token): one indexed lookup on
# either unique digest index. The token itself is never sent to MySQL.
TENANT_BY_TOKEN = select(*_COLUMNS).where(_by_digest(bindparam("digest"))).limit(1)

# Every digest a token can be looked up by now (each application's current token, and its former one during the grace
# period; NULL otherwise): what the API's tenant directory reads, at most every few seconds and only while strangers
# have spent its budget of lookups, to tell a real tenant it has not met yet from a stranger without a query each.
# Bounded: a deployment with more applications than MAX_KNOWN_DIGESTS reads one row more, and the directory then
# keeps the budget's rule alone (every process holding millions of digests would cost more than it saves).
MAX_KNOWN_DIGESTS = 200_000
TOKEN_DIGESTS = select(
    applications.c.token_digest, case((_PREVIOUS_VALID, applications.c.previous_token_digest), else_=None)
).limit(MAX_KNOWN_DIGESTS + 1)


def _float(value) -> float | None:
    return None if value is None else float(value)


def application_from_row(row, sealer: TokenSealer | None = None) -> Application | None:
    """An :class:`Application` from a row of :data:`TENANT_BY_TOKEN` (a mapping or a tuple in its column order).

    With ``sealer``, the tokens are unsealed; without, a plaintext is known only while a row still has one (rows
    from before migration 0006's last step). The API's tenant directory passes none: it never needs a plaintext.
    """
    if not row:
        return None
    row = row._mapping if hasattr(row, "_mapping") else dict(zip([c.name for c in _COLUMNS], row, strict=True))
    token, previous = row["token"], row["previous_token"]
    if sealer is not None:
        token = sealer.unseal(row["token_sealed"], row["token_digest"]) or token
        previous = sealer.unseal(row["previous_token_sealed"], row["previous_token_digest"]) or previous
    return Application(
        token=token,
        name=row["name"],
        chats_count=int(row["chats_count"]),
        id=int(row["id"]),
        suspended=bool(row["suspended"]),
        previous_token=previous,
        previous_token_expires_at=_float(row["previous_token_expires_at"]),
        token_rotated_at=_float(row["token_rotated_at"]),
        token_generation=int(row["token_generation"]),
        limits=TenantLimits(row["requests_per_second"], row["max_chats"], row["max_message_bytes"]),
        last_activity_at=_float(row["last_activity_at"]),
        token_digest=row["token_digest"] or (token_digest(token) if token else None),
        previous_token_digest=row["previous_token_digest"] or (token_digest(previous) if previous else None),
        cors_origins=None if row["cors_origins"] is None else tuple(filter(None, row["cors_origins"].split(","))),
    )


class Applications:
    """Application lifecycle over MySQL and the Redis numbering keys."""

    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        keys: RedisKeys,
        *,
        max_name_chars: int = NAME_MAX_CHARS,
        cleanups: list[Callable[[int], None]] | None = None,
        sealer: TokenSealer | None = None,
    ) -> None:
        self.sealer = sealer
        self.engine = engine
        self.client = client
        self.keys = keys
        self.max_name_chars = max_name_chars
        self.cleanups = cleanups or []

    def create(
        self, name: object, idempotency_key: str | None = None, fingerprint: str | None = None
    ) -> tuple[Application, bool]:
        """Create an application; with a key already used, return that application instead.

        Returns ``(application, created)``. ``idempotency_key`` is stored as given: the REST API passes it scoped
        to its caller (:func:`chat_common.wire.idempotency.caller_key`), the operator ``k8s:<uid>``. ``fingerprint``
        (the REST API's request digest; None for the operator) must match the one the key was first used with,
        else :class:`~chat_common.wire.idempotency.KeyReused`.
        """
        name = clean_name(name, self.max_name_chars)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        for _ in range(3):
            token = new_token()
            try:
                with self.engine.begin() as conn:
                    result = conn.execute(
                        applications.insert().values(
                            **self._token_columns("token", token),
                            name=name,
                            idempotency_key=idempotency_key,
                            idempotency_fingerprint=fingerprint if idempotency_key is not None else None,
                        )
                    )
                digest = token_digest(token)
                return Application(token, name, 0, int(result.inserted_primary_key[0]), token_digest=digest), True
            except IntegrityError:
                if idempotency_key is not None and (existing := self._find_keyed(idempotency_key)):
                    application, first_fingerprint = existing
                    if first_fingerprint != fingerprint:
                        raise KeyReused("this Idempotency-Key was used for a different request") from None
                    return application, False
                # otherwise a token collision (2^-192): draw again
        raise RuntimeError("could not allocate a unique token")

    def _token_columns(self, prefix: str, token: str) -> dict[str, object]:
        """The columns a new token is stored in: its digest and sealed copy, and no plaintext."""
        return {
            prefix: None,
            f"{prefix}_digest": token_digest(token),
            f"{prefix}_sealed": self.sealer.seal(token) if self.sealer is not None else None,
        }

    def _row(self, row) -> Application | None:
        return application_from_row(row, self.sealer)

    def _find_keyed(self, key: str) -> tuple[Application, str | None] | None:
        """The application created with this (stored) key and the fingerprint of that request, or None."""
        query = select(*_COLUMNS, applications.c.idempotency_fingerprint).where(applications.c.idempotency_key == key)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else (self._row(row), row.idempotency_fingerprint)

    def find(self, token: str) -> Application | None:
        """The application with this token (or with it as its former token, during the grace period), or None."""
        if not TOKEN_SHAPE.fullmatch(token):
            return None
        with self.engine.connect() as conn:
            found = self._row(conn.execute(TENANT_BY_TOKEN, {"digest": token_digest(token)}).first())
        return None if found is None else found.knowing(token)

    def find_by_id(self, application_id: int) -> Application | None:
        """The application with this row id, or None."""
        with self.engine.connect() as conn:
            return self._row(conn.execute(select(*_COLUMNS).where(applications.c.id == application_id)).first())

    def find_by_idempotency_key(self, key: str) -> Application | None:
        """The application created with this idempotency key, or None."""
        with self.engine.connect() as conn:
            return self._row(conn.execute(select(*_COLUMNS).where(applications.c.idempotency_key == key)).first())

    def find_by_owner(self, owner_uid: str) -> Application | None:
        """The application the resource with this uid manages (set by :meth:`set_owner`), or None."""
        query = select(*_COLUMNS).where(applications.c.owner_uid == owner_uid).order_by(applications.c.id).limit(1)
        with self.engine.connect() as conn:
            return self._row(conn.execute(query).first())

    def set_owner(self, application_id: int, owner_uid: str) -> None:
        """Record which resource manages the application (the operator, on creation)."""
        self._update(application_id, owner_uid=owner_uid)

    def claim_owner(self, application_id: int, owner_uid: str) -> bool:
        """Make the resource ``owner_uid`` the application's owner unless another resource owns it (one UPDATE, so
        two resources adopting at once cannot both win). True when ``owner_uid`` owns it afterwards."""
        condition = and_(
            applications.c.id == application_id,
            or_(applications.c.owner_uid.is_(None), applications.c.owner_uid == owner_uid),
        )
        with self.engine.begin() as conn:
            # rowcount counts matched rows (SQLAlchemy's MySQL dialects connect with CLIENT_FOUND_ROWS).
            matched = conn.execute(update(applications).where(condition).values(owner_uid=owner_uid)).rowcount
        return matched == 1

    def release_owner(self, owner_uid: str) -> int:
        """Forget that the resource ``owner_uid`` manages its applications (it was deleted with ``Retain``), so a
        new resource may adopt them. Returns the number of applications released."""
        with self.engine.begin() as conn:
            query = update(applications).where(applications.c.owner_uid == owner_uid).values(owner_uid=None)
            return conn.execute(query).rowcount

    def list(self, offset: int, limit: int) -> list[Application]:
        """Applications in creation order."""
        query = select(*_COLUMNS).order_by(applications.c.id).offset(offset).limit(limit)
        with self.engine.connect() as conn:
            return [self._row(r) for r in conn.execute(query)]

    def rename(self, token: str, name: object) -> Application | None:
        """Set an application's name; None when the token is unknown."""
        name = clean_name(name, self.max_name_chars)
        application = self.find(token)
        if application is None:
            return None
        return self.rename_application(application, name)

    def rename_application(self, application: Application, name: object) -> Application | None:
        """Set the name of an application found before; None when it is gone since."""
        name = clean_name(name, self.max_name_chars)
        return self._carry(self._update(application.id, name=name), application)

    @staticmethod
    def _carry(after: Application | None, before: Application) -> Application | None:
        """``after`` (read back) with the plaintexts ``before`` knew, for the tokens it still has."""
        for token in (before.token, before.previous_token):
            if after is not None and token is not None:
                after = after.knowing(token)
        return after

    def _update(self, application_id: int, where=None, **values: object) -> Application | None:
        """Set columns of one application (and ``updated_at``); the application after, None when it is gone."""
        condition = applications.c.id == application_id
        with self.engine.begin() as conn:
            conn.execute(
                update(applications)
                .where(condition if where is None else and_(condition, where))
                .values(**values, updated_at=func.now(6))
            )
        return self.find_by_id(application_id)

    # -- tenant management -------------------------------------------------------------------------------------
    def set_suspended(self, application_id: int, suspended: bool) -> Application | None:
        """Suspend (its tokens answer 403, nothing is deleted) or resume an application; None when it is gone."""
        return self._update(application_id, suspended=bool(suspended))

    def rotate_token(
        self, application_id: int, grace_seconds: int = DEFAULT_GRACE_SECONDS, generation: int | None = None
    ) -> tuple[Application | None, bool]:
        """Give the application a new token; the current one keeps working for ``grace_seconds``, then 404s.

        Returns ``(application, rotated)``. With ``generation`` (the operator's ``spec.rotateToken``), rotates
        only while fewer rotations than that were made, and records it: one UPDATE decides, so a retried or
        concurrent reconcile never rotates twice (which would end the grace of the token clients still use).
        Without it, always rotates (the admin endpoint). A rotation during another's grace period ends that
        grace: only the token of the moment before a rotation keeps working. Numbering, idempotency keys and
        rate limits are keyed by application id, so requests with either token share them.
        """
        grace_seconds = check_grace_seconds(grace_seconds)
        next_generation = applications.c.token_generation + 1 if generation is None else generation
        where = None if generation is None else applications.c.token_generation < generation
        for _ in range(3):
            token = new_token()
            values = {
                # MySQL applies SET assignments left to right: the previous_token columns take the token's before
                # they change. Plaintext columns end NULL (a row from before migration 0006's last step loses its).
                "previous_token": None,
                "previous_token_digest": applications.c.token_digest,
                "previous_token_sealed": applications.c.token_sealed,
                "previous_token_expires_at": func.now(6) + text(f"INTERVAL {int(grace_seconds)} SECOND"),
                **self._token_columns("token", token),
                "token_rotated_at": func.now(6),
                "token_generation": next_generation,
                "updated_at": func.now(6),
            }
            condition = applications.c.id == application_id
            statement = update(applications).where(condition if where is None else and_(condition, where))
            try:
                with self.engine.begin() as conn:
                    changed = conn.execute(statement.ordered_values(*values.items())).rowcount
            except IntegrityError:
                continue  # the new token collided with another one (2^-192): draw again
            application = self.find_by_id(application_id)
            if changed and application is not None:
                application = application.knowing(token)  # the caller hands it out: no key needed for that
            return application, bool(changed)
        raise RuntimeError("could not allocate a unique token")

    def set_limits(self, application_id: int, limits: TenantLimits) -> Application | None:
        """Set the per-tenant limits (None each: the default); None when the application is gone."""
        return self._update(application_id, **{name: getattr(limits, name) for name in LIMIT_FIELDS})

    def set_cors_origins(self, application_id: int, origins: tuple[str, ...] | None) -> Application | None:
        """Set the origins allowed by CORS on its stream and ticket routes (None: the deployment's; checked with
        :func:`chat_common.validation.clean_origins`); None when the application is gone."""
        return self._update(application_id, cors_origins=None if origins is None else ",".join(origins))

    def usage(self, application_id: int) -> Usage | None:
        """Chats and messages (as of the last count sync), last activity and state; None when it is gone.

        Last activity is kept by numbering in Redis on every create and edit (no MySQL write per request);
        reading it here copies it to ``last_activity_at`` so it survives Redis losing its data.
        """
        application = self.find_by_id(application_id)
        if application is None:
            return None
        raw = self.client.hget(self.keys.numbers(application_id), "at")
        last = application.last_activity_at
        if raw is not None and (last is None or float(raw) > last + 0.5):
            last = float(raw)
            self._update_activity(application_id, last)
        return Usage(application.chats_count, self.messages_count(application_id), last, application.suspended)

    def _update_activity(self, application_id: int, unix: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(applications)
                .where(applications.c.id == application_id)
                .values(last_activity_at=func.from_unixtime(literal_column(repr(float(unix)))))
            )

    def messages_count(self, application_id: int) -> int:
        """Messages of an application, from the per-chat counts the count sync maintains.

        Summing ``chats.messages_count`` reads one index range of the application's chats; counting the
        messages table instead would scan every message.
        """
        query = select(func.coalesce(func.sum(chats.c.messages_count), 0)).where(
            chats.c.application_id == application_id
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _forget_counters(self, application: Application, *tokens: str | None) -> None:
        # Counters of versions before 0004 were kept per token: whichever plaintexts are known here.
        known = {t for t in (application.token, application.previous_token, *tokens) if t}
        legacy = [self.keys.legacy_application(t) for t in sorted(known)]
        for key in (self.keys.numbers(application.id), *legacy):  # one by one: on a Redis Cluster, slots differ
            self.client.delete(key)

    def delete(self, token: str, batch_size: int = 5000) -> int | None:
        """Delete an application with its chats, messages, counters and search documents.

        Rows go in bounded batches so no transaction holds locks for long. Returns the number of messages
        deleted, or None when the token is unknown. Writes still queued for it are dead-lettered by the writers.
        """
        application = self.find(token)
        if application is None:
            return None
        return self.delete_application(application, batch_size)

    def delete_application(self, application: Application, batch_size: int = 5000) -> int:
        """Delete an application found before (as :meth:`delete`); returns the number of messages deleted."""
        self._forget_counters(application)
        deleted = 0
        batch = message_batch(application.id, batch_size)
        with self.engine.connect() as conn:
            while True:
                with conn.begin():
                    ids = conn.execute(batch).scalars().all()
                    if not ids:
                        break
                    conn.execute(
                        messages.delete().where(messages.c.application_id == application.id, messages.c.id.in_(ids))
                    )
                deleted += len(ids)
                log.info("deleting application: %d messages so far", deleted)
            # Its event log too, in batches (no foreign key cascades them: chat_common.schema.tables).
            prune = events.delete().where(events.c.application_id == application.id)
            while True:
                with conn.begin():
                    if conn.execute(prune.with_dialect_options(mysql_limit=batch_size)).rowcount < batch_size:
                        break
            with conn.begin():
                conn.execute(chats.delete().where(chats.c.application_id == application.id))
                conn.execute(applications.delete().where(applications.c.id == application.id))
        # Again: a create racing the delete may have re-seeded the counters from the rows being deleted.
        self._forget_counters(application)
        for cleanup in self.cleanups:
            cleanup(application.id)
        return deleted

    def close(self) -> None:
        """Release the engine's connections and the Redis client."""
        self.engine.dispose()
        self.client.close()


def message_batch(application_id: int, limit: int) -> Select:
    """Ids of up to ``limit`` messages of an application: the next batch its deletion removes.

    By the tenant's own key, a range of the unique key ``(application_id, chat_id, number)``: no join through
    chats, and on a database sharded by application, one shard.
    """
    return select(messages.c.id).where(messages.c.application_id == application_id).limit(limit)


def build_applications(settings, engine: Engine, client: redis.Redis) -> Applications:
    """The application lifecycle wired with the configured search backend's cleanup and the token sealing key
    (API and operator use this)."""
    from chat_common.search import build_search

    search = build_search(settings, engine)
    return Applications(
        engine,
        client,
        RedisKeys(settings.redis_key_prefix),
        max_name_chars=settings.max_name_chars,
        cleanups=[search.delete_application],
        sealer=TokenSealer.from_key(settings.token_sealing_key),
    )
