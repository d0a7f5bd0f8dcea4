"""What an ``Application`` resource means for the chat system, as plain functions over the shared service layer.

Nothing here knows Kubernetes: the create/rename/delete/suspend/rotate/limits/CORS implementation is
:class:`chat_common.tenancy.applications.Applications` (the one the API's admin endpoints use); this module only decides
which of those to call for a resource's spec, so it can be tested against the real MariaDB and Redis without an API
server.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from chat_common.tenancy.applications import (
    DEFAULT_GRACE_SECONDS,
    Application,
    Applications,
    TenantLimits,
    Usage,
    check_grace_seconds,
)
from chat_common.tenancy.webhooks import (
    EndpointConflict,
    EndpointSpec,
    SealingUnavailable,
    SyncResult,
    WebhookEndpoints,
    check_secret,
)
from chat_common.validation import Invalid, clean_origins

# Idempotency keys share one column with the REST API's Idempotency-Key header; the prefix keeps a client's
# key from ever meaning "the application of resource <uid>".
KEY_PREFIX = "k8s:"
MISSING = "the application was deleted outside the operator; delete and re-apply this resource for a new tenant"
ADOPTION_OFF = (
    "adopting an existing application (spec.existingToken) is turned off in this deployment "
    "(chart value operator.allowAdoption, ALLOW_ADOPTION)"
)
ADOPTION_FORMER_TOKEN = "spec.existingToken is a rotated-away token; only the current token can adopt an application"
ADOPTION_OWNED = "the application is managed by another Application resource; it cannot be adopted"
ADOPTION_MOVE = "this resource manages another application; spec.existingToken cannot move it to a different one"
# spec.limits (camelCase, as Kubernetes spells fields) -> the tenancy layer's names.
LIMIT_FIELDS = {
    "requestsPerSecond": "requests_per_second",
    "maxChats": "max_chats",
    "maxMessageBytes": "max_message_bytes",
}


class Policy(enum.StrEnum):
    """What deleting the resource does to the application (like a PersistentVolume's reclaim policy)."""

    RETAIN = "Retain"
    DELETE = "Delete"


class Rejected(Exception):
    """The spec cannot be provisioned as it stands; retrying will not help until it changes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class WebhookRef:
    """One entry of ``spec.webhooks``: an endpoint, and where its signing secret is (a Secret's key)."""

    name: str
    url: str
    event_types: tuple[str, ...] | None  # None: all
    secret_name: str
    secret_key: str = "secret"
    enabled: bool = True

    @classmethod
    def parse(cls, entry: object, index: int) -> WebhookRef:
        """An entry as the CRD's schema shapes it (this checks the shape again; the rules are the tenancy layer's)."""
        where = f"spec.webhooks[{index}]"
        if not isinstance(entry, Mapping):
            raise Rejected("InvalidSpec", f"{where} must be an object")
        ref = entry.get("secretRef")
        types = entry.get("eventTypes")
        enabled = entry.get("enabled", True)
        fields_ok = (
            isinstance(entry.get("name"), str)
            and isinstance(entry.get("url"), str)
            and (types is None or isinstance(types, list))
            and isinstance(ref, Mapping)
            and isinstance(ref.get("name"), str)
            and isinstance(ref.get("key", "secret"), str)
            and isinstance(enabled, bool)
        )
        if not fields_ok:
            raise Rejected("InvalidSpec", f"{where} needs name, url and secretRef.name (strings), enabled a boolean")
        return cls(
            name=entry["name"],
            url=entry["url"],
            event_types=None if types is None else tuple(types),
            secret_name=ref["name"],
            secret_key=ref.get("key") or "secret",
            enabled=enabled,
        )


class WebhooksNotSynced(Exception):
    """``spec.webhooks`` could not be applied as it stands (``reason``: WebhookConflict, InvalidWebhook,
    SealingKeyMissing); the tenant itself is fine, and the next refresh tries again."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Spec:
    """The parts of an ``Application``'s spec the operator acts on."""

    name: object
    deletion_policy: Policy = Policy.RETAIN
    existing_token: str | None = None
    suspended: bool = False
    rotate_token: int = 0  # rotations asked for so far: the operator rotates while the tenant has made fewer
    previous_token_grace_seconds: int = DEFAULT_GRACE_SECONDS
    limits: TenantLimits = field(default_factory=TenantLimits)
    cors_origins: tuple[str, ...] | None = None  # spec.corsOrigins; None (omitted): the deployment's
    webhooks: tuple[WebhookRef, ...] = ()  # spec.webhooks

    @classmethod
    def parse(cls, spec: Mapping) -> Spec:
        """Read a resource's ``spec``; the CRD schema already rejects most bad input, this catches the rest."""
        policy = spec.get("deletionPolicy") or Policy.RETAIN.value
        try:
            deletion_policy = Policy(policy)
        except ValueError:
            raise Rejected("InvalidSpec", f"spec.deletionPolicy must be Retain or Delete, not {policy!r}") from None
        token = spec.get("existingToken") or None
        if token is not None and not isinstance(token, str):
            raise Rejected("InvalidSpec", "spec.existingToken must be a string")
        suspended = spec.get("suspended", False)
        if not isinstance(suspended, bool):
            raise Rejected("InvalidSpec", "spec.suspended must be true or false")
        rotate = spec.get("rotateToken", 0)
        if isinstance(rotate, bool) or not isinstance(rotate, int) or rotate < 0:
            raise Rejected("InvalidSpec", "spec.rotateToken must be a non-negative integer")
        raw_limits = spec.get("limits") or {}
        raw_origins = spec.get("corsOrigins")
        if raw_origins is not None and not isinstance(raw_origins, list):
            raise Rejected("InvalidSpec", "spec.corsOrigins must be a list of origins")
        try:
            cors_origins = None if raw_origins is None else clean_origins(raw_origins)
        except Invalid as exc:
            raise Rejected("InvalidSpec", f"spec.corsOrigins: {exc}") from None
        raw_webhooks = spec.get("webhooks") or []
        if not isinstance(raw_webhooks, list):
            raise Rejected("InvalidSpec", "spec.webhooks must be a list of endpoints")
        webhooks = tuple(WebhookRef.parse(entry, i) for i, entry in enumerate(raw_webhooks))
        names = [w.name for w in webhooks]
        if len(set(names)) != len(names):
            raise Rejected("InvalidSpec", "spec.webhooks names an endpoint more than once")
        try:
            grace = check_grace_seconds(spec.get("previousTokenGraceSeconds", DEFAULT_GRACE_SECONDS))
            if not isinstance(raw_limits, Mapping) or set(raw_limits) - set(LIMIT_FIELDS):
                raise Invalid(f"limits may only set {', '.join(LIMIT_FIELDS)}")
            limits = TenantLimits.parse({LIMIT_FIELDS[k]: v for k, v in raw_limits.items()})
        except Invalid as exc:
            message = str(exc)
            for camel, snake in LIMIT_FIELDS.items():  # name the field as the resource spells it
                message = message.replace(snake, f"limits.{camel}")
            message = message.replace("grace_seconds", "previousTokenGraceSeconds")
            raise Rejected("InvalidSpec", f"spec.{message}") from None
        return cls(
            name=spec.get("name"),
            deletion_policy=deletion_policy,
            existing_token=token,
            suspended=suspended,
            rotate_token=rotate,
            previous_token_grace_seconds=grace,
            limits=limits,
            cors_origins=cors_origins,
            webhooks=webhooks,
        )


@dataclass(frozen=True)
class Provisioned:
    """The application a resource stands for, and what it took to get there."""

    application: Application
    created: bool = False
    adopted: bool = False
    renamed_from: str | None = None


@dataclass(frozen=True)
class Managed:
    """The tenant after its management fields were brought in line with the spec, and what that changed."""

    application: Application
    suspended_changed: bool = False
    rotated: bool = False
    limits_changed: bool = False
    cors_changed: bool = False


@dataclass(frozen=True)
class Released:
    """What deleting a resource did to its application."""

    policy: Policy
    found: bool
    messages_deleted: int = 0


def idempotency_key(uid: str) -> str:
    """The key an application is created under for the resource with this uid."""
    return KEY_PREFIX + uid


class Provisioner:
    """Provision, locate, measure and release the application behind an ``Application`` resource.

    Adoption (``spec.existingToken``) hands the resource — and whoever can read its Secret — every future token of
    the tenant, so it is allowed only when the deployment turned it on (``allow_adoption``), only with the tenant's
    current token (a rotated-away one may be a leaker's), and only of a tenant no other resource manages. A refusal
    is :class:`Rejected` with reason ``AdoptionRefused``: no ownership is recorded and no Secret is written.
    """

    def __init__(
        self, applications: Applications, *, allow_adoption: bool = False, webhooks: WebhookEndpoints | None = None
    ) -> None:
        self.applications = applications
        self.allow_adoption = allow_adoption
        self.webhooks = webhooks  # None: spec.webhooks is not acted on (a deployment or test without the store)

    def provision(self, uid: str, spec: Spec, *, provisioned_before: bool = False) -> Provisioned:
        """Make the application exist with the spec's name; safe to repeat any number of times.

        Keyed on the resource's uid, so a retry after a crash, a resumed operator or a second replica finds
        the application created before instead of creating another one. ``provisioned_before`` (the resource
        was ready once) means the application must already exist: one deleted behind the operator's back is
        reported, never silently replaced by an empty tenant with a new token.
        """
        try:
            owned = self.applications.find_by_owner(uid)
            created = adopted = False
            if owned is not None:  # this resource manages it already (created or adopted before)
                application = owned
                if spec.existing_token is not None:
                    named = self.applications.find(spec.existing_token)
                    if named is not None and named.id != owned.id:
                        raise Rejected("AdoptionRefused", ADOPTION_MOVE)
            elif spec.existing_token is not None:
                application, adopted = self._adopt(uid, spec.existing_token), True
            elif provisioned_before:
                application = self.locate(uid, spec)
                if application is None:
                    raise Rejected("ApplicationMissing", MISSING)
            else:
                application, created = self.applications.create(spec.name, idempotency_key=idempotency_key(uid))
            if not adopted and owned is None:
                # Created under this resource's uid: recorded so the resource finds its tenant by owner.
                self.applications.set_owner(application.id, uid)
            renamed_from = None
            if application.name != spec.name:
                renamed_from = application.name
                application = self.applications.rename_application(application, spec.name)
                if application is None:  # deleted by someone else between the two statements
                    raise Rejected("ApplicationMissing", MISSING)
        except Invalid as exc:
            raise Rejected("InvalidSpec", f"spec.{exc}") from None
        return Provisioned(application, created=created, adopted=adopted, renamed_from=renamed_from)

    def _adopt(self, uid: str, token: str) -> Application:
        """The application ``token`` names, now owned by the resource ``uid``; :class:`Rejected` when not allowed."""
        if not self.allow_adoption:
            raise Rejected("AdoptionRefused", ADOPTION_OFF)
        application = self.applications.find(token)
        if application is None:
            raise Rejected("ApplicationNotFound", "no application has the token given in spec.existingToken")
        if not application.is_current(token):  # found by its former token, during the grace period
            raise Rejected("AdoptionRefused", ADOPTION_FORMER_TOKEN)
        # Recorded so the resource finds its tenant again after a rotation took existingToken's token away; one
        # conditional UPDATE, so of two resources adopting at once only one wins.
        if not self.applications.claim_owner(application.id, uid):
            raise Rejected("AdoptionRefused", ADOPTION_OWNED)
        return application

    def locate(self, uid: str, spec: Spec) -> Application | None:
        """The application of a resource, if it exists (one or two indexed lookups).

        By owner (an adopted tenant's ``existingToken`` stops naming it once a rotation's grace period ended), then
        by the creation's idempotency key. Never by ``existingToken`` alone: a resource whose adoption was refused
        must not read, manage or (``Delete``) delete the tenant its token names.
        """
        application = self.applications.find_by_owner(uid)
        if application is not None:
            return application
        return self.applications.find_by_idempotency_key(idempotency_key(uid))

    def manage(self, application: Application, spec: Spec) -> Managed:
        """Bring suspension, limits, CORS origins and token rotation in line with the spec; idempotent, each step one
        UPDATE.

        A rotation happens only while the tenant has made fewer rotations than ``spec.rotateToken`` (the tenancy
        layer decides in the UPDATE itself), so a retried or repeated reconcile never rotates twice.
        """
        suspended_changed = rotated = limits_changed = cors_changed = False
        current: Application | None = application
        if current.suspended != spec.suspended:
            current = self.applications.set_suspended(current.id, spec.suspended)
            suspended_changed = True
        if current is not None and current.limits != spec.limits:
            current = self.applications.set_limits(current.id, spec.limits)
            limits_changed = True
        if current is not None and current.cors_origins != spec.cors_origins:
            current = self.applications.set_cors_origins(current.id, spec.cors_origins)
            cors_changed = True
        if current is not None and spec.rotate_token > current.token_generation:
            current, rotated = self.applications.rotate_token(
                current.id, spec.previous_token_grace_seconds, generation=spec.rotate_token
            )
        if current is None:  # deleted by someone else meanwhile
            raise Rejected("ApplicationMissing", MISSING)
        return Managed(current, suspended_changed, rotated, limits_changed, cors_changed)

    def sync_webhooks(
        self, application: Application, refs: tuple[WebhookRef, ...], secrets: Mapping[str, str]
    ) -> SyncResult:
        """Make the tenant's operator-managed endpoints exactly ``refs`` (:meth:`WebhookEndpoints.sync_managed`),
        each with its signing secret from ``secrets`` (by endpoint name; missing: the endpoint keeps its secret, or
        waits to be created). :class:`WebhooksNotSynced` when the spec cannot be applied as it stands."""
        assert self.webhooks is not None
        specs = []
        for index, ref in enumerate(refs):
            entry = {"name": ref.name, "url": ref.url, "event_types": ref.event_types, "enabled": ref.enabled}
            try:
                spec = EndpointSpec.parse(entry, self.webhooks.policy)
            except Invalid as exc:
                raise WebhooksNotSynced("InvalidWebhook", f"spec.webhooks[{index}] ({ref.name}): {exc}") from None
            specs.append(EndpointSpec(spec.name, spec.url, spec.event_types, secrets.get(ref.name), spec.enabled))
        try:
            return self.webhooks.sync_managed(application.id, specs)
        except EndpointConflict as exc:
            raise WebhooksNotSynced("WebhookConflict", str(exc)) from None
        except SealingUnavailable as exc:
            raise WebhooksNotSynced("SealingKeyMissing", str(exc)) from None
        except Invalid as exc:
            raise WebhooksNotSynced("InvalidWebhook", str(exc)) from None
        except LookupError:
            raise Rejected("ApplicationMissing", MISSING) from None

    @staticmethod
    def check_signing_secret(value: str) -> str | None:
        """Why a Secret's value cannot sign (None: it can): the tenancy layer's shape of a secret."""
        try:
            check_secret(value)
        except Invalid as exc:
            return str(exc)
        return None

    def usage(self, application: Application) -> Usage:
        """Chats, messages (as of the last count sync), last activity and state."""
        usage = self.applications.usage(application.id)
        if usage is None:
            raise Rejected("ApplicationMissing", MISSING)
        return usage

    def rename(self, application: Application, name: object) -> Application | None:
        """Give an application the spec's name again (after someone renamed it through the REST API)."""
        try:
            return self.applications.rename_application(application, name)
        except Invalid as exc:
            raise Rejected("InvalidSpec", f"spec.{exc}") from None

    def messages_count(self, application_id: int) -> int:
        """Messages of an application, from the per-chat counts the count sync maintains."""
        return self.applications.messages_count(application_id)

    def release(self, uid: str, spec: Spec) -> Released:
        """Apply the deletion policy: ``Delete`` removes the application and everything in it, ``Retain`` keeps it
        and gives up its ownership, so that another resource may adopt it (where adoption is allowed).

        Repeating it is harmless: an application already gone counts as deleted.
        """
        if spec.deletion_policy is Policy.RETAIN:
            return Released(Policy.RETAIN, found=self.applications.release_owner(uid) > 0)
        application = self.locate(uid, spec)
        if application is None:
            return Released(spec.deletion_policy, found=False)
        deleted = self.applications.delete_application(application)
        return Released(Policy.DELETE, found=deleted is not None, messages_deleted=deleted or 0)
