"""``spec.webhooks`` through the reconciler, on the fake tenancy stores (applications and webhook endpoints) and the
real Kubernetes client against the stand-in API server: endpoints follow the spec, signing secrets come from labelled
Secrets, ``status.webhooks`` and the ``WebhooksHealthy`` condition report what the delivery service found, with an
event on each transition, and a webhook problem never fails the tenant."""

from __future__ import annotations

import base64

import jsonschema
import pytest

from chat_operator import kube
from chat_operator.provisioning import Provisioner
from chat_operator.reconciler import READY, Reconciler
from tests.operator.conftest import API_URL, application
from tests.operator.test_reconciler import bump, condition, reasons, run
from tests.unit.fakes import FakeWebhookEndpoints

URL = "https://hooks.example.com/chat"
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()


@pytest.fixture
def webhooks() -> FakeWebhookEndpoints:
    return FakeWebhookEndpoints()


@pytest.fixture
def reconciler(applications, secrets, webhooks) -> Reconciler:
    return Reconciler(Provisioner(applications, allow_adoption=True, webhooks=webhooks), secrets, API_URL)


def signing_secret(apiserver, name: str, value: str = SECRET, labelled: bool = True, key: str = "secret") -> None:
    labels = {kube.SIGNING_LABEL: "true"} if labelled else {}
    apiserver.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "tenants", "labels": labels},
            "data": {key: base64.b64encode(value.encode()).decode()},
        }
    )


def hook(name: str = "orders", secret: str = "orders-signing", **fields) -> dict:
    return {"name": name, "url": URL, "secretRef": {"name": secret}, **fields}


def entries(body: dict) -> dict[str, dict]:
    return {e["name"]: e for e in body["status"].get("webhooks", [])}


def test_an_endpoint_follows_the_spec_with_the_secret_of_its_labelled_secret(
    reconciler, apiserver, webhooks, applications, crd_schema
):
    signing_secret(apiserver, "orders-signing")
    body = application(webhooks=[hook(eventTypes=["message.created"])])
    outcome = run(reconciler.apply, body)
    assert "WebhooksSynced" in reasons(outcome) and not outcome.failure
    app_id = applications.find_by_owner(body["metadata"]["uid"]).id
    endpoint = webhooks.get(app_id, "orders")
    assert endpoint.managed_by == "k8s" and endpoint.event_types == ("message.created",)
    assert webhooks.secrets[(app_id, "orders")] == [SECRET]
    assert entries(body)["orders"] == {"name": "orders", "state": "healthy", "enabled": True, "position": "0"}
    assert condition(body, kube.WEBHOOKS_HEALTHY)["status"] == "True"
    assert body["status"]["phase"] == READY
    jsonschema.validate(body, crd_schema)
    assert reasons(run(reconciler.apply, body)) == []  # again: nothing to do

    signing_secret(apiserver, "orders-signing", OTHER)  # the tenant rotates its Secret
    outcome = run(reconciler.refresh, body)
    assert reasons(outcome) == ["WebhooksSynced"] and webhooks.secrets[(app_id, "orders")] == [OTHER, SECRET]

    run(reconciler.apply, bump(body, webhooks=[hook(url=URL + "/v2")]))
    assert webhooks.get(app_id, "orders").url == URL + "/v2"
    removed = run(reconciler.apply, bump(body, webhooks=[]))
    assert "WebhooksSynced" in reasons(removed) and webhooks.list(app_id) == []
    assert body["status"]["webhooks"] == [] and condition(body, kube.WEBHOOKS_HEALTHY)["reason"] == "NoEndpoints"


def test_a_missing_or_unlabelled_secret_waits_and_is_reported_once(reconciler, apiserver, webhooks, applications):
    signing_secret(apiserver, "not-for-us", labelled=False)
    body = application(webhooks=[hook(secret="absent"), hook("b", secret="not-for-us")])
    outcome = run(reconciler.apply, body)
    assert "SecretMissing" in reasons(outcome) and body["status"]["phase"] == READY  # the tenant works
    cond = condition(body, kube.WEBHOOKS_HEALTHY)
    assert (cond["status"], cond["reason"]) == ("False", "SecretMissing")
    assert "absent not found" in cond["message"] and "not labelled" in cond["message"]
    assert {e["state"] for e in entries(body).values()} == {"pending"}
    assert condition(body, kube.SYNCED)["status"] == "True"
    app_id = applications.find_by_owner(body["metadata"]["uid"]).id
    assert webhooks.list(app_id) == []  # nothing signs with a secret nobody knows
    assert "SecretMissing" not in reasons(run(reconciler.refresh, body))  # reported once

    signing_secret(apiserver, "absent")
    signing_secret(apiserver, "not-for-us", "whsec_tooshort")
    run(reconciler.refresh, body)
    assert entries(body)["orders"]["state"] == "healthy" and entries(body)["b"]["state"] == "pending"
    assert "whsec_" in condition(body, kube.WEBHOOKS_HEALTHY)["message"]  # the value is not a signing secret


def test_failing_disabled_and_recovered_are_events_and_the_condition(reconciler, apiserver, webhooks, applications):
    signing_secret(apiserver, "orders-signing")
    body = application(webhooks=[hook()])
    run(reconciler.apply, body)
    app_id = applications.find_by_owner(body["metadata"]["uid"]).id

    webhooks.dispatcher_sets(app_id, "orders", state="failing", failing_since=1_800_000_000.0, last_error="503")
    outcome = run(reconciler.refresh, body)
    assert reasons(outcome) == ["WebhookFailing"] and "503" in outcome.events[0].message
    assert entries(body)["orders"]["failingSince"] == "2027-01-15T08:00:00Z"
    assert condition(body, kube.WEBHOOKS_HEALTHY)["reason"] == "EndpointFailing"
    assert reasons(run(reconciler.refresh, body)) == []  # no event while it stays failing

    webhooks.dispatcher_sets(app_id, "orders", state="disabled", disabled_reason="the receiver answered 410")
    assert reasons(run(reconciler.refresh, body)) == ["WebhookDisabled"]
    assert condition(body, kube.WEBHOOKS_HEALTHY)["reason"] == "EndpointDisabled"
    assert entries(body)["orders"]["disabledReason"] == "the receiver answered 410"

    run(reconciler.apply, bump(body, webhooks=[hook(enabled=False)]))
    back = run(reconciler.apply, bump(body, webhooks=[hook(enabled=True)]))  # re-enabled: healthy again
    assert "WebhookRecovered" in reasons(back) and entries(body)["orders"]["state"] == "healthy"
    assert condition(body, kube.WEBHOOKS_HEALTHY)["status"] == "True"


def test_a_name_taken_through_the_rest_api_or_a_refused_url_is_reported_not_failed(
    reconciler, apiserver, webhooks, applications
):
    from chat_common.tenancy.webhooks import EndpointSpec

    signing_secret(apiserver, "orders-signing")
    body = application()
    run(reconciler.apply, body)
    app_id = applications.find_by_owner(body["metadata"]["uid"]).id
    webhooks.create(app_id, EndpointSpec("orders", URL))  # by an admin, through the REST API
    outcome = run(reconciler.apply, bump(body, webhooks=[hook()]))
    assert reasons(outcome) == ["WebhookConflict"] and not outcome.failure
    assert condition(body, kube.WEBHOOKS_HEALTHY)["reason"] == "WebhookConflict"
    assert webhooks.get(app_id, "orders").managed_by == "api"  # left alone
    assert body["status"]["phase"] == READY and condition(body, kube.SYNCED)["status"] == "True"

    refused = run(reconciler.apply, bump(body, webhooks=[hook("internal", url="https://10.0.0.7/hook")]))
    assert reasons(refused) == ["InvalidWebhook"] and "private" in refused.events[0].message
    assert webhooks.get(app_id, "internal") is None


def test_resources_without_webhooks_never_touch_the_store(reconciler, webhooks):
    body = application()
    run(reconciler.apply, body)
    run(reconciler.refresh, body)
    assert webhooks.calls == [] and condition(body, kube.WEBHOOKS_HEALTHY) is None and "webhooks" not in body["status"]
