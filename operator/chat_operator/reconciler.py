"""The decisions behind each kopf handler, returned as plain outcomes (status fields, events, retry or give up).

:class:`Reconciler` ties the provisioning logic to the token Secret and the status, and never raises for
expected trouble: the kopf handlers translate an :class:`Outcome` into a status patch, Kubernetes Events and
kopf's retry exceptions. That keeps every branch testable without an API server or kopf's runtime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import redis
import urllib3
from kubernetes.client.exceptions import ApiException
from sqlalchemy.exc import DBAPIError

from chat_common import metrics as shared_metrics
from chat_common.tenancy.applications import Application, Usage, rfc3339
from chat_common.tenancy.webhooks import WebhookEndpoint
from chat_operator import kube
from chat_operator.provisioning import (
    LIMIT_FIELDS,
    MISSING,
    Managed,
    Policy,
    Provisioner,
    Rejected,
    Spec,
    WebhooksNotSynced,
)

log = logging.getLogger(__name__)

PENDING, READY, FAILED, DELETING = "Pending", "Ready", "Failed", "Deleting"
ACTIVE, SUSPENDED = "Active", "Suspended"  # status.state of a Ready tenant (the State printer column)
MAX_RETRY_DELAY = 300.0
# Failures that mean there is no working tenant behind the resource (others leave a working one as it was).
TENANT_GONE = frozenset({"ApplicationMissing", "ApplicationNotFound"})


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the resource."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What a handler invocation should leave behind."""

    status: dict = field(default_factory=dict)  # status fields to merge-patch (only the changed ones)
    events: tuple[Event, ...] = ()
    retry_after: float | None = None  # set: run the handler again after this many seconds
    failure: str | None = None  # reason, when the invocation failed (for metrics and the handler's exception)
    permanent: bool = False  # the failure needs a spec change, not a retry
    became_ready: bool = False  # first time this resource's tenant is ready (provisioning latency)


@dataclass(frozen=True)
class Resource:
    """The parts of an ``Application`` object a decision needs."""

    body: Mapping  # the whole object, for owner references
    uid: str
    name: str
    namespace: str
    generation: int
    spec: Mapping
    status: Mapping

    @classmethod
    def from_body(cls, body: Mapping) -> Resource:
        """Wrap a raw object (as kopf passes it)."""
        meta = body["metadata"]
        return cls(
            body=body,
            uid=meta["uid"],
            name=meta["name"],
            namespace=meta["namespace"],
            generation=int(meta.get("generation") or 0),
            spec=body.get("spec") or {},
            status=body.get("status") or {},
        )


def backoff(retry: int) -> float:
    """Seconds before the next attempt after ``retry`` failed ones: 5, 10, 20 … capped at five minutes."""
    return min(5.0 * 2 ** min(retry, 10), MAX_RETRY_DELAY)


# Errors worth retrying: the database, Redis or the Kubernetes API is unreachable or said no for now.
TRANSIENT = (DBAPIError, redis.RedisError, ApiException, urllib3.exceptions.HTTPError, OSError)


class Reconciler:
    """Create/resume/update, refresh and finalize decisions for ``Application`` resources."""

    def __init__(
        self,
        provisioner: Provisioner,
        secrets: kube.KubeSecrets,
        api_url: str,
        clock: Callable[[], str] = kube.now_rfc3339,
        unix_clock: Callable[[], float] = time.time,
    ) -> None:
        self.provisioner = provisioner
        self.secrets = secrets
        self.api_url = api_url
        self.clock = clock
        self.unix_clock = unix_clock
        self._suspended: dict[str, bool] = {}  # uid -> suspended, for the bounded gauge of suspended tenants

    # -- shared steps ------------------------------------------------------------------------------------------
    def _count_suspended(self, uid: str, suspended: bool | None) -> None:
        if suspended is None:
            self._suspended.pop(uid, None)
        else:
            self._suspended[uid] = suspended
        shared_metrics.TENANTS_SUSPENDED.set(sum(self._suspended.values()))

    def _write_secret(self, resource: Resource, application: Application) -> tuple[dict, kube.SecretChange]:
        """The token Secret: the current token, and the former one with its expiry while it still works.

        The database keeps tokens as digests and sealed copies (chat_common.tenancy.tokens): without the sealing key (or
        with another one) the token cannot be recovered to write, which is :class:`Rejected` — a rotation
        (``spec.rotateToken``) draws a new one the operator knows.
        """
        if application.token is None:
            raise Rejected(
                "TokenUnavailable",
                "the application's token cannot be recovered for its Secret (the database keeps only its digest; "
                "is TOKEN_SEALING_KEY the key it was sealed with?); rotate it with spec.rotateToken to write a new one",
            )
        in_grace = application.previous_token_valid(self.unix_clock())
        secret = kube.secret_body(
            resource.body,
            application.token,
            self.api_url,
            application.previous_token if in_grace else None,
            rfc3339(application.previous_token_expires_at) if in_grace else None,
        )
        previous = application.previous_digest()
        also_ours = frozenset({previous} if previous else ())
        return secret, self.secrets.apply(secret, also_ours)

    @staticmethod
    def _management_events(managed: Managed, spec: Spec) -> list[Event]:
        application = managed.application
        events = []
        if managed.suspended_changed:
            if application.suspended:
                events.append(Event("Normal", "Suspended", "application suspended: its tokens answer 403"))
            else:
                events.append(Event("Normal", "Resumed", "application resumed: its tokens work again"))
        if managed.limits_changed:
            given = {k: getattr(application.limits, v) for k, v in LIMIT_FIELDS.items()}
            text = ", ".join(f"{k}={'default' if v is None else v}" for k, v in given.items())
            events.append(Event("Normal", "LimitsChanged", f"limits set: {text}"))
        if managed.cors_changed:
            origins = application.cors_origins
            text = "the deployment's" if origins is None else ", ".join(origins) or "none"
            events.append(Event("Normal", "CorsOriginsChanged", f"CORS origins of the stream routes: {text}"))
        if managed.rotated:
            shared_metrics.TENANT_ROTATIONS.labels("operator").inc()
            until = rfc3339(application.previous_token_expires_at)
            events.append(
                Event(
                    "Normal",
                    "TokenRotated",
                    f"rotated the token (rotation {application.token_generation}); the previous token works "
                    f"until {until}",
                )
            )
        if managed.suspended_changed:
            shared_metrics.TENANT_SUSPENSIONS.labels("suspend" if spec.suspended else "resume", "operator").inc()
        return events

    def _tenant_status(self, resource: Resource, application: Application, usage: Usage) -> dict:
        """Status fields and conditions that describe a working tenant (both apply and refresh write them)."""
        now, unix_now = self.clock(), self.unix_clock()
        in_grace = application.previous_token_valid(unix_now)
        expires = rfc3339(application.previous_token_expires_at) if in_grace else None
        conditions = list(resource.status.get("conditions") or [])
        gen = resource.generation
        conditions = kube.set_condition(
            conditions, kube.READY, True, "Provisioned", "token Secret is written", gen, now
        )
        if application.suspended:
            conditions = kube.set_condition(
                conditions, kube.SUSPENDED, True, "Suspended", "every request with its tokens answers 403", gen, now
            )
        else:
            conditions = kube.set_condition(conditions, kube.SUSPENDED, False, "Active", "", gen, now)
        if in_grace:
            message = f"the previous token works until {expires}; the Secret holds both"
            conditions = kube.set_condition(conditions, kube.TOKEN_ROTATING, True, "GracePeriod", message, gen, now)
        else:
            conditions = kube.set_condition(conditions, kube.TOKEN_ROTATING, False, "NoPreviousToken", "", gen, now)
        self._count_suspended(resource.uid, application.suspended)
        return {
            "phase": READY,
            "state": SUSPENDED if application.suspended else ACTIVE,
            "chatsCount": usage.chats,
            "messagesCount": usage.messages,
            "lastActivityAt": rfc3339(usage.last_activity_at),
            "suspended": application.suspended,
            "tokenRotatedAt": rfc3339(application.token_rotated_at),
            "tokenGeneration": application.token_generation,
            "previousTokenExpiresAt": expires,
            "conditions": conditions,
        }

    # -- webhooks ------------------------------------------------------------------------------------------------
    def _signing_secrets(self, resource: Resource, spec: Spec) -> tuple[dict[str, str], dict[str, str]]:
        """``(secrets, missing)``: each endpoint's signing secret read from its Secret, or why it cannot be."""
        found, missing = {}, {}
        for ref in spec.webhooks:
            try:
                value = self.secrets.read_signing_secret(resource.namespace, ref.secret_name, ref.secret_key)
            except kube.SigningSecretMissing as exc:
                missing[ref.name] = str(exc)
                continue
            why = self.provisioner.check_signing_secret(value)
            if why is None:
                found[ref.name] = value
            else:
                missing[ref.name] = f"Secret {ref.secret_name} key {ref.secret_key!r}: {why}"
        return found, missing

    def _webhooks(self, resource: Resource, application: Application, spec: Spec, desired: dict) -> list[Event]:
        """Bring the tenant's endpoints in line with ``spec.webhooks`` and report them: ``status.webhooks``, the
        ``WebhooksHealthy`` condition and an event on each change of state. Never fails the tenant: a problem is the
        condition's reason (WebhookConflict, InvalidWebhook, SealingKeyMissing, SecretMissing, EndpointDisabled,
        EndpointFailing), and the next refresh tries again. Nothing happens for a resource that never had any."""
        status = resource.status
        if self.provisioner.webhooks is None:
            return []
        if not spec.webhooks and not status.get("webhooks") and not kube.find_condition(status, kube.WEBHOOKS_HEALTHY):
            return []
        events: list[Event] = []
        secrets, missing = self._signing_secrets(resource, spec)
        try:
            synced = self.provisioner.sync_webhooks(application, spec.webhooks, secrets)
        except WebhooksNotSynced as exc:
            healthy, reason, message = False, exc.reason, exc.message
            entries = status.get("webhooks") or []
        else:
            changes = [
                f"{what} {', '.join(names)}"
                for what, names in (
                    ("created", synced.created),
                    ("updated", synced.updated),
                    ("deleted", synced.deleted),
                )
                if names
            ]
            if changes:
                events.append(Event("Normal", "WebhooksSynced", "webhook endpoints " + "; ".join(changes)))
            by_name = {e.name: e for e in synced.managed()}
            entries = [_webhook_entry(by_name.get(ref.name), ref.name) for ref in spec.webhooks]
            events += _transitions(status.get("webhooks") or [], entries, by_name)
            healthy, reason, message = _webhooks_health(entries, missing)
        previous = kube.find_condition(status, kube.WEBHOOKS_HEALTHY) or {}
        reported = (previous.get("reason"), previous.get("message")) == (reason, message)
        # One event per distinct problem; a failing or disabled endpoint has its own (_transitions).
        if not healthy and not reported and reason not in ("EndpointFailing", "EndpointDisabled"):
            events.append(Event("Warning", reason, message))
        desired["webhooks"] = entries
        desired["conditions"] = kube.set_condition(
            desired["conditions"], kube.WEBHOOKS_HEALTHY, healthy, reason, message, resource.generation, self.clock()
        )
        return events

    # -- create, resume, spec update --------------------------------------------------------------------------
    def apply(self, resource: Resource, retry: int = 0) -> Outcome:
        """Provision the tenant for the current spec (name, suspension, limits, token rotation) and write its token
        Secret. Idempotent: repeating it after a failure at any step changes nothing more than once."""
        events: list[Event] = []
        try:
            spec = Spec.parse(resource.spec)
            if len(kube.secret_name(resource.name)) > 253:
                raise Rejected("InvalidName", "metadata.name is too long for the token Secret's name")
            # secretName is only ever written once the tenant was ready.
            provisioned_before = bool(resource.status.get("secretName"))
            provisioned = self.provisioner.provision(resource.uid, spec, provisioned_before=provisioned_before)
            managed = self.provisioner.manage(provisioned.application, spec)
            application = managed.application
            secret, change = self._write_secret(resource, application)
            usage = self.provisioner.usage(application)
        except Rejected as exc:
            return self._failed(resource, exc.reason, exc.message, permanent=True)
        except kube.SecretConflict as exc:
            # Heals once someone removes or renames the other Secret, so keep trying, slowly.
            return self._failed(resource, "SecretConflict", str(exc), retry_after=backoff(retry + 3))
        except TRANSIENT as exc:
            return self._failed(resource, "Unavailable", _describe(exc), retry_after=backoff(retry))

        if provisioned.created:
            events.append(Event("Normal", "Created", f"created application {application.name!r}"))
        if provisioned.adopted and not _is_true(resource.status, kube.READY):
            events.append(Event("Normal", "Adopted", f"adopted existing application {application.name!r}"))
        if provisioned.renamed_from is not None:
            events.append(
                Event("Normal", "Renamed", f"renamed application {provisioned.renamed_from!r} to {application.name!r}")
            )
        events += self._management_events(managed, spec)
        if change != "unchanged":
            events.append(Event("Normal", "SecretWritten", f"Secret {secret['metadata']['name']} {change}"))

        desired = self._tenant_status(resource, application, usage)
        try:
            events += self._webhooks(resource, application, spec, desired)
        except Rejected as exc:
            return self._failed(resource, exc.reason, exc.message, permanent=True)
        except TRANSIENT as exc:
            return self._failed(resource, "Unavailable", _describe(exc), retry_after=backoff(retry))
        desired["conditions"] = kube.set_condition(
            desired["conditions"], kube.SYNCED, True, "Applied", "", resource.generation, self.clock()
        )
        desired["secretName"] = secret["metadata"]["name"]
        desired["observedGeneration"] = resource.generation
        return Outcome(
            status=kube.status_changes(resource.status, desired),
            events=tuple(events),
            became_ready=not _is_true(resource.status, kube.READY),
        )

    # -- timer ---------------------------------------------------------------------------------------------------
    def refresh(self, resource: Resource) -> Outcome:
        """Refresh usage, state and readiness; put back what was changed behind the resource's back (name,
        suspension, limits — the spec is the desired state — and the Secret); drop an expired former token.

        Only for resources whose current generation was applied: while a spec change is pending or was
        rejected, the change handlers own the status.
        """
        synced = kube.find_condition(resource.status, kube.SYNCED)
        if not synced or synced.get("status") != "True" or synced.get("observedGeneration") != resource.generation:
            return Outcome()
        events: list[Event] = []
        try:
            spec = Spec.parse(resource.spec)
            application = self.provisioner.locate(resource.uid, spec)
            if application is None:
                return self._missing(resource)
            if application.name != spec.name:
                previous = application.name
                application = self.provisioner.rename(application, spec.name)
                if application is None:
                    return self._missing(resource)
                events.append(Event("Normal", "Renamed", f"restored the name {spec.name!r} (was {previous!r})"))
            managed = self.provisioner.manage(application, spec)
            application = managed.application
            secret, change = self._write_secret(resource, application)
            usage = self.provisioner.usage(application)
        except (Rejected, kube.SecretConflict) as exc:
            log.warning("refresh of %s/%s skipped: %s", resource.namespace, resource.name, exc)
            return Outcome(failure=getattr(exc, "reason", "SecretConflict"))
        except TRANSIENT as exc:
            # Counts going stale for a while is fine; the next tick tries again.
            log.warning("refresh of %s/%s failed: %s", resource.namespace, resource.name, _describe(exc))
            return Outcome(failure="Unavailable")
        events += self._management_events(managed, spec)
        desired = self._tenant_status(resource, application, usage)
        try:
            events += self._webhooks(resource, application, spec, desired)
        except Rejected as exc:
            log.warning("refresh of %s/%s skipped: %s", resource.namespace, resource.name, exc)
            return Outcome(failure=exc.reason)
        except TRANSIENT as exc:
            log.warning("refresh of %s/%s failed: %s", resource.namespace, resource.name, _describe(exc))
            return Outcome(failure="Unavailable")
        if resource.status.get("previousTokenExpiresAt") and not desired["previousTokenExpiresAt"]:
            events.append(Event("Normal", "PreviousTokenExpired", "the previous token's grace period ended"))
        if change != "unchanged":
            events.append(Event("Normal", "SecretRestored", f"Secret {secret['metadata']['name']} {change}"))
        return Outcome(status=kube.status_changes(resource.status, desired), events=tuple(events))

    def _not_ready_status(self, resource: Resource, phase: str, reason: str, message: str) -> dict:
        """The status of a resource in ``phase`` whose tenant is not ready (missing, or being deleted)."""
        conditions = list(resource.status.get("conditions") or [])
        now = self.clock()
        return {
            "phase": phase,
            "conditions": kube.set_condition(conditions, kube.READY, False, reason, message, resource.generation, now),
        }

    def _missing(self, resource: Resource) -> Outcome:
        message = MISSING
        ready = kube.find_condition(resource.status, kube.READY)
        reported = ready is not None and ready.get("reason") == "ApplicationMissing"
        events = () if reported else (Event("Warning", "ApplicationMissing", message),)
        desired = self._not_ready_status(resource, FAILED, "ApplicationMissing", message)
        return Outcome(status=kube.status_changes(resource.status, desired), events=events)

    # -- deletion ------------------------------------------------------------------------------------------------
    def mark_deleting(self, resource: Resource) -> Outcome:
        """First step of a deletion under ``Delete``: show ``Deleting`` while a large tenant goes in batches."""
        try:
            policy = Spec.parse(resource.spec).deletion_policy
        except Rejected:
            policy = Policy.RETAIN
        if policy is not Policy.DELETE or resource.status.get("phase") == DELETING:
            return Outcome()
        message = "deleting the application with all its chats and messages"
        desired = self._not_ready_status(resource, DELETING, "Deleting", message)
        return Outcome(
            status=kube.status_changes(resource.status, desired), events=(Event("Normal", "Deleting", message),)
        )

    def finalize(self, resource: Resource, retry: int = 0) -> Outcome:
        """Honour ``deletionPolicy`` before the finalizer lets the resource go. Idempotent.

        ``Delete`` removes the application with its chats, messages, counters and search documents (the token
        Secret goes with the resource, which owns it). ``Retain`` keeps the data and orphans the token Secret,
        so the tenant stays reachable and can be adopted again with ``spec.existingToken``.
        """
        try:
            spec = Spec.parse(resource.spec)
        except Rejected:
            spec = Spec(name=resource.spec.get("name"))  # an unreadable policy gets the safe default, Retain
        try:
            if spec.deletion_policy is Policy.DELETE:
                released = self.provisioner.release(resource.uid, spec)
                if released.found:
                    message = f"deleted the application and its {released.messages_deleted} messages"
                else:
                    message = "no application to delete"
                self._count_suspended(resource.uid, None)
                return Outcome(events=(Event("Normal", "Deleted", message),))
            # Retain keeps the data; the tenant stops being this resource's, so that another may adopt it.
            self.provisioner.release(resource.uid, spec)
            detached = self.secrets.detach(resource.namespace, kube.secret_name(resource.name), resource.uid)
        except TRANSIENT as exc:
            message = f"cannot apply deletionPolicy {spec.deletion_policy.value} yet: {_describe(exc)}"
            return Outcome(
                events=(Event("Warning", "DeleteFailed", message),),
                retry_after=backoff(retry),
                failure="Unavailable",
            )
        self._count_suspended(resource.uid, None)
        kept = f"; Secret {kube.secret_name(resource.name)} kept for re-adoption" if detached else ""
        return Outcome(events=(Event("Normal", "Retained", "application data kept" + kept),))

    # -- failures ------------------------------------------------------------------------------------------------
    def _failed(
        self,
        resource: Resource,
        reason: str,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
    ) -> Outcome:
        """Record a failed apply in the ``Synced`` condition; the tenant itself may well still be working."""
        now = self.clock()
        status = resource.status
        synced = kube.find_condition(status, kube.SYNCED)
        conditions = kube.set_condition(
            list(status.get("conditions") or []), kube.SYNCED, False, reason, message, resource.generation, now
        )
        if reason in TENANT_GONE or not _is_true(status, kube.READY):
            conditions = kube.set_condition(conditions, kube.READY, False, reason, message, resource.generation, now)
        if permanent or reason == "SecretConflict":
            phase = FAILED
        else:
            phase = READY if status.get("phase") == READY else PENDING
        desired = {"phase": phase, "observedGeneration": resource.generation, "conditions": conditions}
        # One event per distinct problem, not one per retry.
        repeated = synced is not None and synced.get("reason") == reason and synced.get("message") == message
        events = () if repeated else (Event("Warning", reason, message),)
        return Outcome(
            status=kube.status_changes(status, desired),
            events=events,
            retry_after=retry_after,
            failure=reason,
            permanent=permanent,
        )


def _webhook_entry(endpoint: WebhookEndpoint | None, name: str) -> dict:
    """An endpoint as ``status.webhooks`` shows it (``pending``: not created, its Secret is missing)."""
    if endpoint is None:
        return {"name": name, "state": "pending"}
    entry = {
        "name": name,
        "state": endpoint.state,
        "enabled": endpoint.enabled,
        "failingSince": rfc3339(endpoint.failing_since),
        "disabledReason": endpoint.disabled_reason,
        "lastSuccessAt": rfc3339(endpoint.last_success_at),
        "position": str(endpoint.position),
    }
    return {k: v for k, v in entry.items() if v is not None}


def _transitions(before: list, after: list[dict], endpoints: Mapping[str, WebhookEndpoint]) -> list[Event]:
    """An event for each endpoint whose delivery state changed since the last status."""
    was = {e.get("name"): e.get("state") for e in before}
    events = []
    for entry in after:
        name, state = entry["name"], entry["state"]
        previous = was.get(name)
        if state == previous or state == "pending":
            continue
        endpoint = endpoints.get(name)
        error = f": {endpoint.last_error}" if endpoint is not None and endpoint.last_error else ""
        if state == "failing":
            events.append(Event("Warning", "WebhookFailing", f"webhook endpoint {name} is failing{error}"))
        elif state == "disabled":
            why = entry.get("disabledReason") or "failing too long"
            events.append(Event("Warning", "WebhookDisabled", f"webhook endpoint {name} was disabled: {why}"))
        elif state == "healthy" and previous in ("failing", "disabled"):
            events.append(Event("Normal", "WebhookRecovered", f"webhook endpoint {name} delivers again"))
    return events


def _webhooks_health(entries: list[dict], missing: Mapping[str, str]) -> tuple[bool, str, str]:
    """The ``WebhooksHealthy`` condition: (status, reason, message)."""
    if missing:
        return False, "SecretMissing", "; ".join(f"{name}: {why}" for name, why in sorted(missing.items()))
    disabled = [e["name"] for e in entries if e["state"] == "disabled"]
    if disabled:
        return (
            False,
            "EndpointDisabled",
            "disabled (enable it again with enabled false, then true): " + ", ".join(disabled),
        )
    failing = [e["name"] for e in entries if e["state"] == "failing"]
    if failing:
        return False, "EndpointFailing", "failing (retried): " + ", ".join(failing)
    if not entries:
        return True, "NoEndpoints", ""
    return True, "Delivering", ""


def _is_true(status: Mapping, type_: str) -> bool:
    condition = kube.find_condition(status, type_)
    return condition is not None and condition.get("status") == "True"


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of an infrastructure error."""
    if isinstance(exc, ApiException):
        return f"Kubernetes API answered {exc.status} {exc.reason}"
    if isinstance(exc, DBAPIError):
        return f"database unavailable ({type(exc.orig).__name__})"
    if isinstance(exc, redis.RedisError):  # its text names the host and port
        return f"Redis unavailable ({type(exc).__name__})"
    # Events and conditions are readable by whoever reads the resource: the error's kind, never its text (hosts).
    return type(exc).__name__
