"""``spec.webhooks`` end to end where MariaDB matters: the reconciler over the real tenancy stores (applications and
webhook endpoints, sealed secrets) and the real Kubernetes client against the stand-in API server. The rules are
covered on fakes in tests/operator/rules/test_webhooks.py."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import text

from chat_common.tenancy.tokens import TokenSealer
from chat_common.tenancy.webhooks import WebhookEndpoints
from chat_common.webhooks.egress import EgressPolicy
from chat_operator import kube
from chat_operator.provisioning import Provisioner
from chat_operator.reconciler import Reconciler
from tests.operator.conftest import API_URL, application
from tests.operator.test_reconciler import bump, condition, reasons, run

SECRET = "whsec_" + base64.b64encode(bytes(range(40))).decode()


@pytest.fixture(scope="module")
def store(op_engine, op_namespace) -> WebhookEndpoints:
    return WebhookEndpoints(op_engine, TokenSealer(op_namespace.settings.webhook_sealing_key), EgressPolicy())


@pytest.fixture(scope="module")
def reconciler(applications, secrets, store) -> Reconciler:
    return Reconciler(Provisioner(applications, allow_adoption=True, webhooks=store), secrets, API_URL)


def test_endpoints_are_stored_sealed_observed_and_deleted_with_the_tenant(
    reconciler, apiserver, store, applications, op_engine
):
    apiserver.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "real-signing", "namespace": "tenants", "labels": {kube.SIGNING_LABEL: "true"}},
            "data": {"key": base64.b64encode(SECRET.encode()).decode()},
        }
    )
    hook = {"name": "orders", "url": "https://hooks.example.com/", "secretRef": {"name": "real-signing", "key": "key"}}
    body = application(webhooks=[hook], deletionPolicy="Delete")
    assert "WebhooksSynced" in reasons(run(reconciler.apply, body))
    app = applications.find_by_owner(body["metadata"]["uid"])
    assert store.get(app.id, "orders").managed_by == "k8s"
    assert store.signing_secrets(app.id, "orders") == [SECRET]
    with op_engine.connect() as conn:
        sealed = conn.execute(
            text("SELECT secret_sealed FROM webhook_endpoints WHERE application_id = :a"), {"a": app.id}
        )
        assert SECRET not in sealed.scalar_one()

    with op_engine.begin() as conn:  # what the delivery service writes on a 410
        conn.execute(
            text(
                "UPDATE webhook_endpoints SET state = 'disabled', disabled_at = NOW(6), disabled_reason = 'gone (410)'"
                " WHERE application_id = :a"
            ),
            {"a": app.id},
        )
    assert reasons(run(reconciler.refresh, body)) == ["WebhookDisabled"]
    assert condition(body, kube.WEBHOOKS_HEALTHY)["reason"] == "EndpointDisabled"
    assert reasons(run(reconciler.refresh, body)) == []  # the spec's enabled: true does not undo it

    run(reconciler.apply, bump(body, webhooks=[{**hook, "enabled": False}]))
    assert "WebhookRecovered" in reasons(run(reconciler.apply, bump(body, webhooks=[hook])))
    assert store.get(app.id, "orders").state == "healthy"

    run(reconciler.finalize, body)
    assert store.list(app.id) == []
