"""kopf handlers for ``Application`` resources: thin adapters from kopf's calls to :class:`Reconciler` decisions.

Registered into an explicit registry by :func:`register` (not at import time), so the collaborators and the
timer interval come from the configuration built in ``__main__``.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from chat_operator import kube, metrics
from chat_operator.config import OperatorConfig
from chat_operator.reconciler import Outcome, Reconciler, Resource

log = logging.getLogger(__name__)

# kopf's own bookkeeping (handler progress, last-handled spec) lives in annotations under this prefix,
# so the status keeps the strict schema of the CRD.
ANNOTATION_PREFIX = f"operator.{kube.GROUP}"
RESOURCE = {"group": kube.GROUP, "version": kube.VERSION, "plural": kube.PLURAL}
# Every handler but the adoption skips orphaned Applications. kopf keeps its finalizer on an object only while a
# deletion handler or a timer matches it, so on an orphaned one it neither adds it back nor waits for it.
SERVED = {**RESOURCE, "annotations": {kube.ANNOTATION_ORPHANED: kopf.ABSENT}}
ORPHANED = {**RESOURCE, "annotations": {kube.ANNOTATION_ORPHANED: kopf.PRESENT}}


def deliver(outcome: Outcome, body: Mapping, patch: kopf.Patch, handler: str) -> None:
    """Turn an outcome into kopf's terms: status patch, Events, and an exception when it failed or must retry."""
    if outcome.status:
        patch.status.update(outcome.status)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if outcome.failure:
        metrics.FAILURES.labels(handler, outcome.failure).inc()
    if outcome.permanent:
        raise kopf.PermanentError(f"{outcome.failure}: fix the spec to retry")
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.failure or "not done yet", delay=outcome.retry_after)


def _observe_provisioning(body: Mapping) -> None:
    created = body.get("metadata", {}).get("creationTimestamp")
    if created:
        started = datetime.datetime.fromisoformat(created)
        metrics.PROVISIONING_SECONDS.observe((datetime.datetime.now(datetime.UTC) - started).total_seconds())


def _instrumented(handler: str, fn: Callable[..., None]) -> Callable[..., None]:
    """Count invocations, failures and duration of one handler; kopf retries whatever it raises."""

    def run(**kwargs: Any) -> None:
        started = time.monotonic()
        metrics.HANDLED.labels(handler).inc()
        try:
            fn(**kwargs)
        except (kopf.TemporaryError, kopf.PermanentError):
            raise
        except Exception:
            metrics.FAILURES.labels(handler, "error").inc()
            raise
        finally:
            metrics.HANDLER_SECONDS.labels(handler).observe(time.monotonic() - started)

    run.__name__ = run.__qualname__ = fn.__name__
    return run


def configure_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Production settings: annotation storage, finalizer name, events, retries, timeouts, worker pool."""
    settings.persistence.finalizer = kube.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Events are posted explicitly for what the operator did; kopf's per-handler chatter stays in the logs.
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "chat-operator"
    settings.posting.reporting_instance = os.environ.get("HOSTNAME", "chat-operator")
    settings.peering.stealth = True  # keep-alives every few seconds would drown the logs
    # The CRD is installed with the chart and namespaces are listed explicitly: no need to watch CRDs and
    # namespaces, which would need cluster-wide RBAC for them.
    settings.scanning.disabled = True
    settings.execution.max_workers = config.workers
    settings.execution.default_backoff = 30  # unexpected errors; expected ones choose their own delay
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # Renew watches regularly so a silently dropped connection is noticed within minutes.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


def register(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    config: OperatorConfig,
    ping_database: Callable[[], bool],
) -> None:
    """Register every handler of the operator into ``registry``."""

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings, config)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Also configures the official client the token Secrets are written with (in-cluster or kubeconfig).
        return kopf.login_via_client(**kwargs)

    @kopf.on.probe(id="database", registry=registry)
    def database(**_: Any) -> bool:
        # Reported, never raised: the database being down must not get the operator restarted.
        return ping_database()

    def apply(body: kopf.Body, patch: kopf.Patch, retry: int, **_: Any) -> None:
        outcome = reconciler.apply(Resource.from_body(body), retry=retry)
        if outcome.became_ready and not outcome.failure:
            _observe_provisioning(body)
        deliver(outcome, body, patch, "apply")

    provision = _instrumented("apply", apply)
    kopf.on.resume(**SERVED, id="provision", registry=registry)(provision)
    kopf.on.create(**SERVED, id="provision", registry=registry)(provision)
    # Spec changes only: label and annotation edits do not need the database.
    kopf.on.update(**SERVED, id="update", field="spec", registry=registry)(provision)

    def adopt(body: kopf.Body, patch: kopf.Patch, retry: int, **kwargs: Any) -> None:
        # Orphaned by an uninstall (the chart's hook): the operator that starts next takes the object back. Once
        # the annotation is gone, kopf puts its finalizer back and the timer refreshes the status again.
        patch.metadata.annotations[kube.ANNOTATION_ORPHANED] = None
        apply(body=body, patch=patch, retry=retry, **kwargs)

    kopf.on.resume(**ORPHANED, id="adopt", registry=registry)(_instrumented("apply", adopt))

    def refresh(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        deliver(reconciler.refresh(Resource.from_body(body)), body, patch, "refresh")

    kopf.timer(
        **SERVED,
        id="refresh",
        interval=config.refresh_seconds,
        # Spread the resources over the interval instead of querying for all of them at once after a start.
        initial_delay=lambda **_: random.uniform(0, config.refresh_seconds),
        # Not while a change is being handled: the change handler writes the status then.
        idle=min(10.0, config.refresh_seconds),
        registry=registry,
    )(_instrumented("refresh", refresh))

    def mark_deleting(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        deliver(reconciler.mark_deleting(Resource.from_body(body)), body, patch, "finalize")

    def finalize(body: kopf.Body, patch: kopf.Patch, retry: int, **_: Any) -> None:
        deliver(reconciler.finalize(Resource.from_body(body), retry=retry), body, patch, "finalize")

    # Two steps, each in its own processing cycle (kopf's default lifecycle runs one handler at a time),
    # so `Deleting` is visible in `kubectl get` while a large tenant is being deleted.
    kopf.on.delete(**SERVED, id="mark-deleting", registry=registry)(_instrumented("finalize", mark_deleting))
    kopf.on.delete(**SERVED, id="finalize", registry=registry)(_instrumented("finalize", finalize))
