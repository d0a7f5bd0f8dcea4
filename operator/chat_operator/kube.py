"""Everything the operator sends to Kubernetes besides kopf's own traffic: the token Secret and status bodies.

Kept in one small module so the rest of the operator is plain Python. Bodies are plain dicts (checked offline
against the Kubernetes schemas and the CRD); :class:`KubeSecrets` is the only code that calls the API server.
"""

from __future__ import annotations

import base64
import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from chat_common.tenancy.tokens import token_digest

log = logging.getLogger(__name__)

GROUP = "chat-system.io"
VERSION = "v1"
KIND = "Application"
PLURAL = "applications"
FINALIZER = f"{GROUP}/application-cleanup"
SECRET_SUFFIX = "-chat-token"
MANAGED_BY = "chat-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_APPLICATION = f"{GROUP}/application"
ANNOTATION_RETAINED = f"{GROUP}/retained-from"
# Set by the chart's uninstall hook in its orphan mode: the operator lets go of the Application for good (no
# finalizer, no handling) until an operator starts again and adopts it back.
ANNOTATION_ORPHANED = f"{GROUP}/orphaned"
REQUEST_TIMEOUT = 10  # seconds per API call; kopf retries the handler when one times out

READY = "Ready"  # the tenant works: application exists, token Secret written
SYNCED = "Synced"  # the current generation of the spec was applied
SUSPENDED = "Suspended"  # the tenant is suspended: its tokens answer 403
TOKEN_ROTATING = "TokenRotating"  # a rotated-away token still works (grace period); the Secret holds both
# Secret keys besides token and apiUrl, present only during a rotation's grace period.
PREVIOUS_KEYS = ("previousToken", "previousTokenExpiresAt")

SecretChange = Literal["created", "updated", "adopted", "unchanged"]
WEBHOOKS_HEALTHY = "WebhooksHealthy"  # every endpoint of spec.webhooks delivers
# The label a tenant puts on the Secret holding a webhook signing secret: the one kind of Secret the operator did
# not make that it may read (templates/operator/secret-policy.yaml admits its empty patch, which changes nothing).
SIGNING_LABEL = f"{GROUP}/webhook-secret"


class SecretConflict(Exception):
    """A Secret of the name the operator needs exists and is not this resource's to overwrite."""


class SigningSecretMissing(Exception):
    """A webhook's signing secret cannot be read: its Secret is missing, lacks the key, or is not labelled for the
    operator (:data:`SIGNING_LABEL`)."""


def signing_secret(secret: Mapping, key: str) -> str:
    """The signing secret in a Secret read from the API server; :class:`SigningSecretMissing` when it is not labelled
    :data:`SIGNING_LABEL` ``=true`` (the same rule with or without the admission policy) or has no such key."""
    meta = secret.get("metadata") or {}
    name = meta.get("name")
    if (meta.get("labels") or {}).get(SIGNING_LABEL) != "true":
        raise SigningSecretMissing(f"Secret {name} is not labelled {SIGNING_LABEL}=true")
    raw = (secret.get("data") or {}).get(key)
    if not raw:
        raise SigningSecretMissing(f"Secret {name} has no key {key!r}")
    try:
        return base64.b64decode(raw).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise SigningSecretMissing(f"Secret {name} key {key!r} is not an ASCII secret") from None


def secret_name(resource_name: str) -> str:
    """Name of the Secret holding a resource's token."""
    return resource_name + SECRET_SUFFIX


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def secret_body(
    owner: Mapping, token: str, api_url: str, previous_token: str | None = None, previous_expires_at: str | None = None
) -> dict:
    """The token Secret of an ``Application``: keys ``token`` and ``apiUrl``, owned by the resource; during a
    rotation's grace period also ``previousToken`` and ``previousTokenExpiresAt`` (RFC 3339).

    Owned (``ownerReferences``) so that Kubernetes garbage-collects it with the resource. Unlike
    ``kopf.adopt``, the owner's labels are not copied: GitOps tools track resources by such labels and
    would prune a Secret that carries them but is not in their repository.
    """
    meta = owner["metadata"]
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {
                LABEL_MANAGED_BY: MANAGED_BY,
                "app.kubernetes.io/part-of": "chat-system",
                LABEL_APPLICATION: meta["name"],
            },
        },
        "data": {"token": _b64(token), "apiUrl": _b64(api_url)},
    }
    if previous_token and previous_expires_at:
        body["data"]["previousToken"] = _b64(previous_token)
        body["data"]["previousTokenExpiresAt"] = _b64(previous_expires_at)
    kopf.append_owner_reference(body, owner=owner)
    return body


def secret_token(secret: Mapping) -> str | None:
    """The token a Secret holds, if any."""
    raw = (secret.get("data") or {}).get("token")
    return base64.b64decode(raw).decode() if raw else None


def _owned_by(secret: Mapping, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in secret.get("metadata", {}).get("ownerReferences") or [])


@dataclass(frozen=True)
class SecretPlan:
    """What to do to bring an existing Secret (or none) in line with the desired one."""

    change: SecretChange
    patch: dict | None = None


def plan_secret(current: Mapping | None, desired: Mapping, also_ours: frozenset[str] = frozenset()) -> SecretPlan:
    """Decide between create, merge-patch and leaving alone; raise :class:`SecretConflict` when it is not ours.

    A Secret is ours when it is owned by the resource, or when the operator left it behind under the
    ``Retain`` policy and it holds the very token being provisioned (re-adoption with ``existingToken``).
    An owned Secret holding another tenant's token is refused too: a resource never changes tenant. The same
    tenant's tokens are the desired one and ``also_ours`` (digests: its token before the last rotation).
    """
    if current is None:
        return SecretPlan("created")
    owner_ref = desired["metadata"]["ownerReferences"][0]
    meta = current.get("metadata", {})
    held = secret_token(current)
    # also_ours holds digests (chat_common.tenancy.tokens): the former token's plaintext may be known to nobody any
    # more.
    same_token = held is not None and (held == secret_token(desired) or token_digest(held) in also_ours)
    name = meta.get("name")
    if _owned_by(current, owner_ref["uid"]):
        if not same_token:
            raise SecretConflict(f"Secret {name} holds another application's token; refusing to switch tenants")
        change: SecretChange = "updated"
        refs = None
    elif meta.get("labels", {}).get(LABEL_MANAGED_BY) == MANAGED_BY and same_token:
        change = "adopted"
        refs = [*(meta.get("ownerReferences") or []), owner_ref]
    else:
        raise SecretConflict(f"Secret {name} already exists and does not belong to this Application")
    labels = {**meta.get("labels", {}), **desired["metadata"]["labels"]}
    current_data = current.get("data") or {}
    if refs is None and current_data == desired["data"] and labels == meta.get("labels", {}):
        return SecretPlan("unchanged")
    patch_meta: dict = {"labels": labels, "resourceVersion": meta.get("resourceVersion")}
    if refs is not None:
        patch_meta["ownerReferences"] = refs
        patch_meta["annotations"] = {ANNOTATION_RETAINED: None}
    # null removes a key in a merge patch: the former token leaves the Secret when its grace period ends.
    data = {**{k: None for k in PREVIOUS_KEYS if k in current_data and k not in desired["data"]}, **desired["data"]}
    return SecretPlan(change, {"metadata": patch_meta, "data": data})


def detach_patch(current: Mapping, owner_uid: str) -> dict | None:
    """Merge patch that orphans a Secret from its ``Application`` (``Retain``), or None if not owned."""
    meta = current.get("metadata", {})
    refs = meta.get("ownerReferences") or []
    if not any(ref.get("uid") == owner_uid for ref in refs):
        return None
    return {
        "metadata": {
            "resourceVersion": meta.get("resourceVersion"),
            "ownerReferences": [ref for ref in refs if ref.get("uid") != owner_uid] or None,
            "annotations": {ANNOTATION_RETAINED: owner_uid},
        }
    }


class ForeignSecret(SecretConflict):
    """A Secret of the needed name exists and the operator may not touch it (the chart's admission policy refused)."""


class KubeSecrets:
    """Token Secrets through the official Kubernetes client: create and merge-patch only — no ``get``.

    A Secret is read with an empty merge patch, which answers the stored object like a ``get`` but is a write: the
    chart's ValidatingAdmissionPolicy (templates/operator/secret-policy.yaml) admits the operator's writes only on
    Secrets that carry its ``managed-by`` label, so the operator can read and change its own token Secrets and no
    other Secret of the namespaces it serves (Kubernetes RBAC cannot grant by label, nor by name for names not
    known in advance). An empty patch changes nothing and does not bump the Secret's resourceVersion."""

    def __init__(self, api_factory: Callable[[], client.CoreV1Api]) -> None:
        # Built on first use: the client is configured by kopf's login, which runs after the handlers exist.
        self._api_factory = api_factory
        self._api: client.CoreV1Api | None = None

    @property
    def api(self) -> client.CoreV1Api:
        """The CoreV1 API client."""
        if self._api is None:
            self._api = self._api_factory()
        return self._api

    def read(self, namespace: str, name: str) -> dict | None:
        """A Secret as a plain dict (camelCase, as on the wire), or None; :class:`ForeignSecret` when one exists
        that is not the operator's to read (refused by the admission policy: 403)."""
        try:
            secret = self.api.patch_namespaced_secret(
                name,
                namespace,
                {},
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise ForeignSecret(f"Secret {name} already exists and does not belong to this Application") from None
            raise
        return self.api.api_client.sanitize_for_serialization(secret)

    def read_signing_secret(self, namespace: str, name: str, key: str) -> str:
        """A webhook's signing secret from a tenant's Secret labelled :data:`SIGNING_LABEL` ``=true``, read like the
        token Secrets (an empty patch: no ``get`` on Secrets); :class:`SigningSecretMissing` when it is missing, not
        labelled (then the admission policy refuses the read: 403) or lacks the key."""
        try:
            secret = self.read(namespace, name)
        except ForeignSecret:
            raise SigningSecretMissing(f"Secret {name} is not labelled {SIGNING_LABEL}=true") from None
        if secret is None:
            raise SigningSecretMissing(f"Secret {name} not found")
        return signing_secret(secret, key)

    def apply(self, desired: dict, also_ours: frozenset[str] = frozenset()) -> SecretChange:
        """Create the Secret or bring it in line; optimistic concurrency makes a racing writer retry the handler.

        ``also_ours``: digests of other tokens of the same tenant the Secret may still hold (before a rotation)."""
        meta = desired["metadata"]
        current = self.read(meta["namespace"], meta["name"])
        plan = plan_secret(current, desired, also_ours)
        if plan.change == "created":
            self.api.create_namespaced_secret(
                meta["namespace"],
                client.V1Secret.from_dict(desired),
                _content_type="application/json",  # the generated client leaves it out on POST
                _request_timeout=REQUEST_TIMEOUT,
            )
        elif plan.patch is not None:
            self._merge_patch(meta["namespace"], meta["name"], plan.patch)
        return plan.change

    def detach(self, namespace: str, name: str, owner_uid: str) -> bool:
        """Remove the resource's owner reference so the Secret outlives it; False when there is nothing to do."""
        try:
            current = self.read(namespace, name)
        except ForeignSecret:
            return False  # not the operator's: nothing of it to detach
        patch = detach_patch(current, owner_uid) if current else None
        if patch is None:
            return False
        self._merge_patch(namespace, name, patch)
        return True

    def _merge_patch(self, namespace: str, name: str, patch: dict) -> None:
        self.api.patch_namespaced_secret(
            name,
            namespace,
            patch,
            _content_type="application/merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT,
        )


# -- status ----------------------------------------------------------------------------------------------------


def now_rfc3339() -> str:
    """The current time as Kubernetes writes timestamps."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(status: Mapping, type_: str) -> Mapping | None:
    """The condition of a type in a status, if present."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def set_condition(
    conditions: list[dict],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[dict]:
    """Conditions with one of them set; ``lastTransitionTime`` moves only when the status flips."""
    value = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    moved = previous is None or previous.get("status") != value
    condition = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now if moved else previous.get("lastTransitionTime", now),
    }
    if previous is None:
        return [*conditions, condition]
    # In place: a reordered list would read as a change and cost a status patch.
    return [condition if c is previous else c for c in conditions]


def status_changes(current: Mapping, desired: Mapping) -> dict:
    """The fields of ``desired`` that differ from ``current`` (what a status merge patch needs to carry)."""
    return {key: value for key, value in desired.items() if current.get(key) != value}
