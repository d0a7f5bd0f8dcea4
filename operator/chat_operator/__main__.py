"""`python -m chat_operator`: run the operator until SIGTERM.

Watches ``WATCH_NAMESPACES`` (comma-separated; empty: every namespace), peers with its other replicas through
the ``chat-system`` (Cluster)KopfPeering, answers liveness probes on ``LIVENESS_ENDPOINT`` and serves
Prometheus metrics on ``METRICS_PORT``.
"""

from __future__ import annotations

import logging
import sys

import kopf
from kubernetes import client
from sqlalchemy import create_engine, text

from chat_common import redaction
from chat_common.clients.db import connect_args, make_engine
from chat_common.clients.redis_client import sync_client
from chat_common.metrics import serve_metrics
from chat_common.tenancy.applications import build_applications
from chat_common.tenancy.tokens import TokenSealer
from chat_common.tenancy.webhooks import WebhookEndpoints
from chat_common.webhooks.egress import EgressPolicy
from chat_operator import handlers
from chat_operator.config import ConfigError, OperatorConfig
from chat_operator.kube import KubeSecrets
from chat_operator.provisioning import Provisioner
from chat_operator.reconciler import Reconciler

log = logging.getLogger("chat_operator")


def configure_logging(config: OperatorConfig) -> None:
    """kopf's logging (text or JSON), every line through the redacting filter: no token, key or password in the
    operator's log — kopf logs handler outcomes and, at DEBUG, the bodies it patches."""
    kopf.configure(log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL)
    redaction.install(logging.getLogger().handlers)


def main() -> None:
    """Read the configuration, wire the collaborators, and hand over to kopf."""
    try:
        config = OperatorConfig.from_env()
    except (ConfigError, ValueError) as exc:
        sys.exit(f"chat-operator: {exc}")
    configure_logging(config)
    settings = config.settings
    if not settings.token_sealing_key:
        # It still provisions and rotates (it knows the tokens it draws), but cannot restore a deleted Secret.
        logging.getLogger("chat_operator").warning(
            "TOKEN_SEALING_KEY is unset: tokens are stored only as digests, so a token Secret deleted by hand cannot "
            "be restored (a rotation writes a new one)"
        )
    try:
        applications = build_applications(
            settings,
            make_engine(settings.database_url, pool_size=config.workers),
            sync_client(settings.redis_url, socket_timeout=5, socket_connect_timeout=5),
        )
    except ValueError as exc:  # a TOKEN_SEALING_KEY of the wrong shape
        sys.exit(f"chat-operator: {exc}")
    engine = applications.engine
    redis_client = applications.client
    # spec.webhooks: the tenancy layer's store, with the deployment's egress rule (WEBHOOK_ALLOW_CIDRS, ...).
    # Its own sealing key (WEBHOOK_SEALING_KEY): the dispatcher, which opens these secrets, holds no key to tokens.
    try:
        webhook_sealer = TokenSealer.from_key(settings.webhook_sealing_key)
    except ValueError as exc:
        sys.exit(f"chat-operator: WEBHOOK_SEALING_KEY: {exc}")
    webhooks = WebhookEndpoints(engine, webhook_sealer, EgressPolicy.from_env())
    reconciler = Reconciler(
        Provisioner(applications, allow_adoption=config.allow_adoption, webhooks=webhooks),
        KubeSecrets(client.CoreV1Api),
        config.api_internal_url,
    )

    # Its own tiny engine with short timeouts: the liveness endpoint waits for this answer, and a database that
    # does not answer must not make the probe time out (and the operator restart).
    probe_url, probe_args = connect_args(settings.database_url, connect_timeout=1, read_timeout=2)
    probe_engine = create_engine(
        probe_url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=1,
        pool_recycle=1800,
        hide_parameters=True,
        connect_args=probe_args,
    )

    def ping_database() -> bool:
        try:
            with probe_engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    registry = kopf.OperatorRegistry()
    handlers.register(registry, reconciler, config, ping_database)
    serve_metrics(config.metrics_port)
    log.info(
        "watching %s with peering %r (priority %d)",
        ", ".join(config.namespaces) or "all namespaces",
        config.peering_name,
        config.priority,
    )
    try:
        kopf.run(
            registry=registry,
            clusterwide=config.clusterwide,
            namespaces=config.namespaces,
            standalone=False,
            peering_name=config.peering_name,  # also makes the peering object mandatory
            priority=config.priority,
            liveness_endpoint=config.liveness_endpoint,
        )
    finally:
        engine.dispose()
        probe_engine.dispose()
        redis_client.close()


if __name__ == "__main__":
    main()
