"""A tenant's webhook endpoints: register, change, delete, rotate a signing secret, replay from a cursor — one
implementation for the API's admin endpoints and the operator (``spec.webhooks`` of an ``Application``).

Rows are ``webhook_endpoints`` (migration 0009; the design is in the table's comments). This module writes what an
endpoint's *manager* decides — URL, event types, secret, ``enabled`` — and the two things a manager may reset: the
delivery state (re-enabling, replaying) and the position (replaying). The delivery service
(``services/webhook-dispatcher``) writes the rest (state, failures, leases, and ``position`` as it delivers).

- **Managers.** ``managed_by`` is ``api`` (the admin REST API) or ``k8s`` (the operator). Each changes only its own:
  :meth:`WebhookEndpoints.sync_managed` never touches an ``api`` endpoint (a name taken by one is a conflict the
  operator reports), and the REST operations refuse to change a ``k8s`` one (the resource's spec would put it back);
  both may replay either.
- **Secrets** (``whsec_`` + standard base64 of 24 to 64 random bytes, the Standard Webhooks form) are stored sealed only
  (:meth:`chat_common.tenancy.tokens.TokenSealer.seal_for`, context ``webhook:<application id>:<name>``, so a sealed
  secret copied to another row does not open there), under ``WEBHOOK_SEALING_KEY`` — a key of their own: the
  dispatcher holds it, not the tokens' ``TOKEN_SEALING_KEY``. Without it nothing can be stored that the dispatcher
  could sign with: creating, rotating and syncing answer :class:`SealingUnavailable`. A secret leaves the
  server once, in the answer that created or rotated it (when it was generated or given).
- **Rotation** keeps the former secret signing beside the new one until ``previous_secret_expires_at`` (default 24 h;
  0 ends it at once), so receivers can switch without dropping a delivery.
- **Position**: a new endpoint starts at the event log's head (``event_sequence.last_id``): it receives what commits
  from now on. :meth:`WebhookEndpoints.replay` moves it back to a cursor of the log (as ``GET …/events`` hands out),
  drops the endpoint's held deliveries and makes it healthy again; a cursor older than the log's oldest kept event is
  :class:`CursorExpired` (410, like the event log's), one beyond the head :class:`Invalid`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import Connection, Engine, and_, case, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from chat_common.schema.tables import applications, event_sequence, events, webhook_endpoints, webhook_held
from chat_common.tenancy.applications import DEFAULT_GRACE_SECONDS, check_grace_seconds, rfc3339
from chat_common.tenancy.tokens import TokenSealer
from chat_common.validation import Invalid
from chat_common.webhooks.egress import EgressPolicy
from chat_common.wire.events import EVENT_TYPES

log = logging.getLogger(__name__)

MAX_ENDPOINTS = 10  # per application: each endpoint is a delivery stream the dispatcher keeps a lease on
NAME_SHAPE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS label, as Kubernetes names list entries
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
GENERATED_SECRET_BYTES = 32
NAME_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
API, K8S = "api", "k8s"
HEALTHY, FAILING, DISABLED = "healthy", "failing", "disabled"
MAX_CURSOR = 2**63 - 1
ENDPOINT_FIELDS = ("name", "url", "event_types", "secret", "enabled")
CHANGE_FIELDS = ("url", "event_types", "enabled")


class EndpointNotFound(LookupError):
    """No endpoint of that name in the application (404)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"webhook endpoint {name!r} not found")


class EndpointConflict(Exception):
    """The request collides with what exists: a taken name, the limit of endpoints, or an endpoint another manager
    owns (409)."""


class SealingUnavailable(Exception):
    """This deployment has no ``WEBHOOK_SEALING_KEY``: signing secrets cannot be stored (503; the API says why)."""

    def __init__(self) -> None:
        super().__init__(
            "webhook signing secrets are stored sealed with WEBHOOK_SEALING_KEY, and this deployment has none;"
            " configure it (the chart generates one) to register webhook endpoints"
        )


class CursorExpired(Exception):
    """A replay cursor older than the event log's retention: the events after it were pruned (410)."""


# -- rules -------------------------------------------------------------------------------------------------------


def new_secret() -> str:
    """A signing secret: ``whsec_`` and 32 random bytes in standard base64 (what Standard Webhooks libraries take)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(GENERATED_SECRET_BYTES)).decode("ascii")


def new_name() -> str:
    """A name for an endpoint registered without one: ``wh-`` and 8 random lower-case letters and digits."""
    return "wh-" + "".join(secrets.choice(NAME_ALPHABET) for _ in range(8))


def check_name(value: object) -> str:
    """An endpoint's name: a DNS label (``[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?``); :class:`Invalid` otherwise."""
    if not isinstance(value, str) or not NAME_SHAPE.fullmatch(value):
        raise Invalid(
            "name must be a DNS label: 1 to 63 lower-case letters, digits and '-', starting and ending with a"
            " letter or digit"
        )
    return value


def check_secret(value: object) -> str:
    """A signing secret as given: ``whsec_`` + standard base64 of 24 to 64 bytes; :class:`Invalid` otherwise."""
    shape = f"secret must be {SECRET_PREFIX!r} followed by the standard base64 of {MIN_SECRET_BYTES} to"
    shape += f" {MAX_SECRET_BYTES} bytes"
    if not isinstance(value, str) or not value.startswith(SECRET_PREFIX) or not value.isascii():
        raise Invalid(shape)
    try:
        raw = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(shape) from None
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise Invalid(shape)
    return value


def check_event_types(value: object) -> tuple[str, ...]:
    """A non-empty list of event types, each one of :data:`~chat_common.wire.events.EVENT_TYPES`, without repeats
    (kept in that tuple's order); :class:`Invalid` otherwise."""
    if not isinstance(value, list | tuple) or not value:
        raise Invalid(f"event_types must be a non-empty list of {', '.join(EVENT_TYPES)}")
    for item in value:
        if item not in EVENT_TYPES:
            raise Invalid(f"unknown event type {item!r}; the event types are {', '.join(EVENT_TYPES)}")
    if len(set(value)) != len(value):
        raise Invalid("event_types must not repeat an event type")
    return tuple(t for t in EVENT_TYPES if t in value)


def check_enabled(value: object) -> bool:
    """``enabled``: a JSON boolean."""
    if not isinstance(value, bool):
        raise Invalid("enabled must be true or false")
    return value


def check_cursor(value: object) -> int:
    """A replay cursor: the decimal position of the event log the API hands out (an event's id, a page's next)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not re.fullmatch(r"0|[1-9][0-9]{0,18}", value) or int(value) > MAX_CURSOR:
        raise Invalid("from must be a cursor of the event log: an event's id or a page's next")
    return int(value)


def _given(value: Mapping, name: str) -> object:
    """A field's value, None when it is missing or null (the default)."""
    return value.get(name)


def check_url(value: object, policy: EgressPolicy) -> str:
    """A receiver's URL: the deployment's egress rule (:meth:`EgressPolicy.check_url`), and no whitespace or control
    character anywhere (``urlsplit`` lets some through; a URL is sent as is on the request line)."""
    if isinstance(value, str) and any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise Invalid("url must not contain whitespace or control characters")
    return policy.check_url(value)


def _unknown(value: Mapping, allowed: Sequence[str], what: str) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise Invalid(f"unknown field {unknown[0]!r} of {what}; its fields are {', '.join(allowed)}")


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What a manager asks for: an endpoint's name, URL, event types, secret (None: generate one) and ``enabled``."""

    name: str
    url: str
    event_types: tuple[str, ...] = EVENT_TYPES
    secret: str | None = None
    enabled: bool = True

    @classmethod
    def parse(cls, value: object, policy: EgressPolicy, generate_name: bool = False) -> EndpointSpec:
        """An endpoint from a JSON object with :data:`ENDPOINT_FIELDS` (``url`` required; ``event_types`` default all;
        ``enabled`` default true; ``name`` generated when omitted and ``generate_name``); :class:`Invalid` else."""
        if not isinstance(value, Mapping):
            raise Invalid("a webhook endpoint must be an object")
        _unknown(value, ENDPOINT_FIELDS, "a webhook endpoint")
        name = _given(value, "name")
        if name is None and generate_name:
            name = new_name()
        if _given(value, "url") is None:
            raise Invalid("url is required")
        event_types, secret, enabled = (_given(value, f) for f in ("event_types", "secret", "enabled"))
        return cls(
            name=check_name(name),
            url=check_url(value["url"], policy),
            event_types=EVENT_TYPES if event_types is None else check_event_types(event_types),
            secret=None if secret is None else check_secret(secret),
            enabled=True if enabled is None else check_enabled(enabled),
        )


@dataclass(frozen=True, slots=True)
class EndpointChanges:
    """A change of an endpoint (REST ``PATCH``): the fields given, None for the ones to keep."""

    url: str | None = None
    event_types: tuple[str, ...] | None = None
    enabled: bool | None = None

    @classmethod
    def parse(cls, value: object, policy: EgressPolicy) -> EndpointChanges:
        """Changes from a JSON object with any of :data:`CHANGE_FIELDS` (at least one); :class:`Invalid` else."""
        if not isinstance(value, Mapping) or not value:
            raise Invalid(f"send an object with any of {', '.join(CHANGE_FIELDS)}")
        _unknown(value, CHANGE_FIELDS, "a change of a webhook endpoint (the secret changes with rotate-secret)")
        url, event_types, enabled = (_given(value, f) for f in CHANGE_FIELDS)
        return cls(
            url=None if url is None else check_url(url, policy),
            event_types=None if event_types is None else check_event_types(event_types),
            enabled=None if enabled is None else check_enabled(enabled),
        )


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """An endpoint as stored; times are unix seconds. ``secret``: the plaintext, only in the answer that created or
    rotated it (None everywhere else)."""

    name: str
    url: str
    event_types: tuple[str, ...]
    enabled: bool
    state: str
    position: int
    managed_by: str
    id: int = 0
    application_id: int = 0
    failing_since: float | None = None
    disabled_at: float | None = None
    disabled_reason: str | None = None
    last_success_at: float | None = None
    last_failure_at: float | None = None
    last_error: str | None = None
    previous_secret_expires_at: float | None = None
    created_at: float | None = None
    secret: str | None = field(default=None, repr=False)

    def public(self) -> dict:
        """The JSON shape of an endpoint (``id`` is its name; ``position`` a cursor of the event log)."""
        shape = {
            "id": self.name,
            "url": self.url,
            "event_types": list(self.event_types),
            "enabled": self.enabled,
            "state": self.state,
            "failing_since": rfc3339(self.failing_since),
            "disabled_at": rfc3339(self.disabled_at),
            "disabled_reason": self.disabled_reason,
            "last_success_at": rfc3339(self.last_success_at),
            "last_failure_at": rfc3339(self.last_failure_at),
            "last_error": self.last_error,
            "position": str(self.position),
            "managed_by": self.managed_by,
            "previous_secret_expires_at": rfc3339(self.previous_secret_expires_at),
            "created_at": rfc3339(self.created_at),
        }
        if self.secret is not None:
            shape["secret"] = self.secret
        return shape


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What :meth:`WebhookEndpoints.sync_managed` changed (names), and the application's endpoints after it."""

    created: tuple[str, ...]
    updated: tuple[str, ...]
    deleted: tuple[str, ...]
    endpoints: tuple[WebhookEndpoint, ...]
    waiting: tuple[str, ...] = ()  # new endpoints not created: their spec has no secret yet

    def managed(self) -> tuple[WebhookEndpoint, ...]:
        """The endpoints the operator manages (``k8s``)."""
        return tuple(e for e in self.endpoints if e.managed_by == K8S)


def secret_context(application_id: int, name: str) -> str:
    """The associated data an endpoint's secrets are sealed with: they open for this row only."""
    return f"webhook:{application_id}:{name}"


def _unix(column):
    return func.unix_timestamp(column).label(column.name)


_T = webhook_endpoints.c
_COLUMNS = (
    _T.id,
    _T.application_id,
    _T.name,
    _T.url,
    _T.event_types,
    _T.enabled,
    _T.state,
    _T.position,
    _T.managed_by,
    _unix(_T.failing_since),
    _unix(_T.disabled_at),
    _T.disabled_reason,
    _unix(_T.last_success_at),
    _unix(_T.last_failure_at),
    _T.last_error,
    # Only while it still signs: an expired former secret is not worth showing.
    func.unix_timestamp(case((_T.previous_secret_expires_at > func.now(6), _T.previous_secret_expires_at))).label(
        "previous_secret_expires_at"
    ),
    _unix(_T.created_at),
    _T.secret_sealed,
)
_RESET_STATE = {"state": HEALTHY, "failing_since": None, "disabled_at": None, "disabled_reason": None}


def _float(value) -> float | None:
    return None if value is None else float(value)


def endpoint_from_row(row) -> WebhookEndpoint:
    """A :class:`WebhookEndpoint` from a row of ``_COLUMNS`` (no secret)."""
    m = row._mapping
    return WebhookEndpoint(
        name=m["name"],
        url=m["url"],
        event_types=tuple(filter(None, m["event_types"].split(","))),
        enabled=bool(m["enabled"]),
        state=m["state"],
        position=int(m["position"]),
        managed_by=m["managed_by"],
        id=int(m["id"]),
        application_id=int(m["application_id"]),
        failing_since=_float(m["failing_since"]),
        disabled_at=_float(m["disabled_at"]),
        disabled_reason=m["disabled_reason"],
        last_success_at=_float(m["last_success_at"]),
        last_failure_at=_float(m["last_failure_at"]),
        last_error=m["last_error"],
        previous_secret_expires_at=_float(m["previous_secret_expires_at"]),
        created_at=_float(m["created_at"]),
    )


def log_head(conn: Connection) -> int:
    """The event log's head: the last event id handed out (every later event is above it)."""
    return int(conn.execute(select(event_sequence.c.last_id).where(event_sequence.c.id == 1)).scalar() or 0)


class WebhookEndpoints:
    """The webhook endpoints of applications over MySQL (module docstring)."""

    def __init__(
        self,
        engine: Engine,
        sealer: TokenSealer | None,
        policy: EgressPolicy,
        max_endpoints: int = MAX_ENDPOINTS,
    ) -> None:
        self.engine = engine
        self.sealer = sealer
        self.policy = policy
        self.max_endpoints = max_endpoints

    # -- reads -------------------------------------------------------------------------------------------------
    def list(self, application_id: int) -> list[WebhookEndpoint]:
        """The application's endpoints, in creation order."""
        query = select(*_COLUMNS).where(_T.application_id == application_id).order_by(_T.id)
        with self.engine.connect() as conn:
            return [endpoint_from_row(row) for row in conn.execute(query)]

    def get(self, application_id: int, name: str) -> WebhookEndpoint | None:
        """One endpoint of the application by name, or None."""
        if not isinstance(name, str) or not NAME_SHAPE.fullmatch(name):
            return None
        with self.engine.connect() as conn:
            return self._get(conn, application_id, name)

    @staticmethod
    def _get(conn: Connection, application_id: int, name: str, lock: bool = False) -> WebhookEndpoint | None:
        query = select(*_COLUMNS).where(_T.application_id == application_id, _T.name == name)
        row = conn.execute(query.with_for_update() if lock else query).first()
        return None if row is None else endpoint_from_row(row)

    # -- writes ------------------------------------------------------------------------------------------------
    def _sealer(self) -> TokenSealer:
        if self.sealer is None:
            raise SealingUnavailable()
        return self.sealer

    def _lock_application(self, conn: Connection, application_id: int) -> None:
        """Serialize the application's endpoint changes (the limit is counted under it); LookupError when gone."""
        found = conn.execute(
            select(applications.c.id).where(applications.c.id == application_id).with_for_update()
        ).first()
        if found is None:
            raise LookupError("application not found")

    def create(self, application_id: int, spec: EndpointSpec, managed_by: str = API) -> WebhookEndpoint:
        """Register an endpoint, starting at the event log's head; the answer carries its secret (generated when the
        spec has none). :class:`EndpointConflict` for a taken name or past :attr:`max_endpoints`."""
        sealer = self._sealer()
        secret = spec.secret or new_secret()
        with self.engine.begin() as conn:
            self._create(conn, sealer, application_id, spec, secret, managed_by)
            created = self._get(conn, application_id, spec.name)
        assert created is not None
        return replace(created, secret=secret)

    def _create(
        self, conn: Connection, sealer: TokenSealer, application_id: int, spec: EndpointSpec, secret: str, by: str
    ) -> None:
        self._lock_application(conn, application_id)
        count = conn.execute(select(func.count()).where(_T.application_id == application_id)).scalar_one()
        if count >= self.max_endpoints:
            raise EndpointConflict(f"an application has at most {self.max_endpoints} webhook endpoints")
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(webhook_endpoints).values(
                        application_id=application_id,
                        name=spec.name,
                        url=spec.url,
                        event_types=",".join(spec.event_types),
                        secret_sealed=sealer.seal_for(secret, secret_context(application_id, spec.name)),
                        managed_by=by,
                        enabled=spec.enabled,
                        position=log_head(conn),
                    )
                )
        except IntegrityError:
            raise EndpointConflict(f"a webhook endpoint named {spec.name!r} exists already") from None

    def _owned(self, conn: Connection, application_id: int, name: str, by: str | None) -> WebhookEndpoint:
        """The endpoint, locked; :class:`EndpointNotFound`, or :class:`EndpointConflict` when ``by`` does not manage
        it (None: any manager may)."""
        endpoint = self._get(conn, application_id, name, lock=True) if NAME_SHAPE.fullmatch(name) else None
        if endpoint is None:
            raise EndpointNotFound(name)
        if by is not None and endpoint.managed_by != by:
            where = "the Application resource's spec.webhooks" if endpoint.managed_by == K8S else "the admin API"
            raise EndpointConflict(f"webhook endpoint {name!r} is managed by {where}; change it there")
        return endpoint

    def update(
        self, application_id: int, name: str, changes: EndpointChanges, managed_by: str | None = API
    ) -> WebhookEndpoint:
        """Change URL, event types or ``enabled``. Enabling an endpoint that is disabled (by its manager, or by the
        dispatcher: 410, failing too long) makes it healthy again: its failure and disabling are forgotten."""
        with self.engine.begin() as conn:
            endpoint = self._owned(conn, application_id, name, managed_by)
            values = self._change_values(endpoint, changes)
            if values:
                conn.execute(update(webhook_endpoints).where(_T.id == endpoint.id).values(**values))
            after = self._get(conn, application_id, name)
        assert after is not None
        return after

    @staticmethod
    def _change_values(endpoint: WebhookEndpoint, changes: EndpointChanges, revive: bool = True) -> dict:
        """The columns a change sets. Turning an endpoint on makes it healthy; so does asking for ``enabled: true``
        when the delivery service disabled it (``revive``: the REST API's re-enable; the operator's spec says
        ``enabled: true`` on every sync, which must not undo a disabling — there, false then true re-enables)."""
        values: dict = {}
        if changes.url is not None and changes.url != endpoint.url:
            values["url"] = changes.url
        if changes.event_types is not None and changes.event_types != endpoint.event_types:
            values["event_types"] = ",".join(changes.event_types)
        if changes.enabled is not None:
            if changes.enabled != endpoint.enabled:
                values["enabled"] = changes.enabled
            if changes.enabled and (not endpoint.enabled or (revive and endpoint.state == DISABLED)):
                values.update(_RESET_STATE)
        if values:
            values["updated_at"] = func.now(6)
        return values

    def delete(self, application_id: int, name: str, managed_by: str | None = API) -> None:
        """Delete an endpoint (its held deliveries go with it: foreign key cascade)."""
        with self.engine.begin() as conn:
            endpoint = self._owned(conn, application_id, name, managed_by)
            conn.execute(delete(webhook_endpoints).where(_T.id == endpoint.id))

    def rotate_secret(
        self,
        application_id: int,
        name: str,
        secret: str | None = None,
        grace_seconds: int = DEFAULT_GRACE_SECONDS,
        managed_by: str | None = API,
    ) -> WebhookEndpoint:
        """A new signing secret (``secret``, or a generated one); the current one keeps signing beside it for
        ``grace_seconds`` (0: not at all). The answer carries the new secret."""
        sealer = self._sealer()
        secret = check_secret(secret) if secret is not None else new_secret()
        grace = check_grace_seconds(grace_seconds)
        with self.engine.begin() as conn:
            endpoint = self._owned(conn, application_id, name, managed_by)
            conn.execute(self._rotation(endpoint, sealer.seal_for(secret, secret_context(application_id, name)), grace))
            after = self._get(conn, application_id, name)
        assert after is not None
        return replace(after, secret=secret)

    @staticmethod
    def _rotation(endpoint: WebhookEndpoint, sealed: str, grace: int | None):
        """The UPDATE that makes ``sealed`` the secret; the current one signs ``grace`` s more (None or 0: no more)."""
        if grace:
            # MySQL applies SET assignments left to right: previous_secret_sealed takes the secret before it changes.
            values = {
                "previous_secret_sealed": _T.secret_sealed,
                "previous_secret_expires_at": func.now(6) + text(f"INTERVAL {int(grace)} SECOND"),
                "secret_sealed": sealed,
                "updated_at": func.now(6),
            }
        else:
            values = {
                "previous_secret_sealed": None,
                "previous_secret_expires_at": None,
                "secret_sealed": sealed,
                "updated_at": func.now(6),
            }
        return update(webhook_endpoints).where(_T.id == endpoint.id).ordered_values(*values.items())

    def replay(self, application_id: int, name: str, from_cursor: object) -> WebhookEndpoint:
        """Deliver the application's events again from after cursor ``from_cursor``: the position moves there, the
        endpoint's held deliveries are dropped (they are at or after it, or were given up on) and it is healthy again
        (``enabled`` stays what its manager set). :class:`CursorExpired` when events after the cursor were pruned;
        :class:`Invalid` for a cursor beyond the log's head."""
        cursor = check_cursor(from_cursor)
        with self.engine.begin() as conn:
            endpoint = self._owned(conn, application_id, name, None)
            head = log_head(conn)
            if cursor > head:
                raise Invalid(f"from is beyond the event log's head ({head}): no event after it exists yet")
            oldest = conn.execute(select(func.min(events.c.id))).scalar()
            if oldest is not None and cursor + 1 < int(oldest):
                raise CursorExpired(
                    "this cursor is older than the event log's retention: events after it were pruned; replay from a"
                    " newer cursor (the oldest kept event's id minus one at the least)"
                )
            conn.execute(delete(webhook_held).where(webhook_held.c.endpoint_id == endpoint.id))
            conn.execute(
                update(webhook_endpoints)
                .where(_T.id == endpoint.id)
                .values(position=cursor, **_RESET_STATE, updated_at=func.now(6))
            )
            after = self._get(conn, application_id, name)
        assert after is not None
        return after

    # -- the operator --------------------------------------------------------------------------------------------
    def sync_managed(self, application_id: int, specs: Sequence[EndpointSpec]) -> SyncResult:
        """Make the application's ``k8s`` endpoints exactly ``specs`` (each with its secret), by name: create the
        new ones, change the changed ones, delete the ones no longer listed; ``api`` endpoints are never touched.

        One transaction. A spec naming an ``api`` endpoint, or more endpoints than :attr:`max_endpoints`, is
        :class:`EndpointConflict` and changes nothing. A changed secret rotates with the default grace period (the
        former one keeps signing for 24 h); one that no longer opens (another sealing key) is simply replaced. A spec
        without a secret (its Kubernetes Secret is missing) keeps an existing endpoint's secret, and is not created
        (``SyncResult.waiting``) until it has one: a secret nobody knows would sign for no receiver. Only storing a
        secret needs the sealing key (:class:`SealingUnavailable`); deleting does not.
        """
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise Invalid("spec.webhooks names its endpoints more than once")
        created, updated, deleted, waiting = [], [], [], []
        with self.engine.begin() as conn:
            self._lock_application(conn, application_id)
            rows = conn.execute(select(*_COLUMNS).where(_T.application_id == application_id).with_for_update()).all()
            current = {row.name: (endpoint_from_row(row), row.secret_sealed) for row in rows}
            taken = sorted(n for n in names if n in current and current[n][0].managed_by != K8S)
            if taken:
                raise EndpointConflict(
                    f"webhook endpoint {taken[0]!r} exists and is managed through the admin API; rename it in"
                    " spec.webhooks, or delete that endpoint"
                )
            unmanaged = sum(1 for endpoint, _ in current.values() if endpoint.managed_by != K8S)
            if unmanaged + len(specs) > self.max_endpoints:
                raise EndpointConflict(
                    f"an application has at most {self.max_endpoints} webhook endpoints ({unmanaged} managed"
                    f" through the admin API, {len(specs)} in spec.webhooks)"
                )
            for name, (endpoint, _) in current.items():
                if endpoint.managed_by == K8S and name not in names:
                    conn.execute(delete(webhook_endpoints).where(_T.id == endpoint.id))
                    deleted.append(name)
            for spec in specs:
                if spec.name not in current:
                    if spec.secret is None:
                        waiting.append(spec.name)
                    else:
                        self._create(conn, self._sealer(), application_id, spec, spec.secret, K8S)
                        created.append(spec.name)
                    continue
                endpoint, sealed = current[spec.name]
                changes = EndpointChanges(spec.url, spec.event_types, spec.enabled)
                values = self._change_values(endpoint, changes, revive=False)
                if values:
                    conn.execute(update(webhook_endpoints).where(_T.id == endpoint.id).values(**values))
                if spec.secret is not None:
                    sealer = self._sealer()
                    context = secret_context(application_id, spec.name)
                    held = sealer.unseal_for(sealed, context)
                    if held != spec.secret:
                        grace = DEFAULT_GRACE_SECONDS if held is not None else None
                        conn.execute(self._rotation(endpoint, sealer.seal_for(spec.secret, context), grace))
                        values = values or {"secret": True}
                if values:
                    updated.append(spec.name)
            after = conn.execute(select(*_COLUMNS).where(_T.application_id == application_id).order_by(_T.id)).all()
        endpoints = tuple(endpoint_from_row(row) for row in after)
        return SyncResult(tuple(created), tuple(updated), tuple(deleted), endpoints, tuple(waiting))

    def signing_secrets(self, application_id: int, name: str) -> list[str]:
        """The secrets an endpoint signs with now (the current one first, then the former one while it signs); for
        tests and tools — the dispatcher reads the sealed columns itself."""
        sealer = self._sealer()
        query = select(_T.secret_sealed, _T.previous_secret_sealed, _T.previous_secret_expires_at > func.now(6)).where(
            and_(_T.application_id == application_id, _T.name == name)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise EndpointNotFound(name)
        context = secret_context(application_id, name)
        found = [sealer.unseal_for(row[0], context)]
        if row[1] and row[2]:
            found.append(sealer.unseal_for(row[1], context))
        return [s for s in found if s is not None]
