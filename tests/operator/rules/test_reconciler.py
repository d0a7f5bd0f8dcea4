"""Handler decisions on the fake tenancy store and the real Kubernetes client against the stand-in API server:
status, conditions, events and the token Secret from each result. What needs MySQL or Redis themselves is in
tests/operator/test_reconciler.py.

Each test drives an ``Application`` object through what kopf would do: call the handler's decision, merge
the status it returns into the object, let the "garbage collector" act on deletion.
"""

from __future__ import annotations

import base64

import jsonschema
import kubernetes_validate
import pytest

from chat_operator import kube
from chat_operator.reconciler import FAILED, PENDING, READY, Outcome
from tests.operator.conftest import API_URL, application
from tests.operator.test_reconciler import bump, condition, reasons, run, token_in_secret


def test_create_provisions_writes_the_secret_and_reports_ready(reconciler, apiserver, applications, crd_schema):
    body = application("acme", name="ACME support")
    outcome = run(reconciler.apply, body)

    assert outcome.failure is None and outcome.became_ready
    assert reasons(outcome) == ["Created", "SecretWritten"]
    status = body["status"]
    assert status["phase"] == READY
    assert status["secretName"] == "acme-chat-token"
    assert status["observedGeneration"] == 1
    assert (status["chatsCount"], status["messagesCount"]) == (0, 0)
    assert condition(body, kube.READY)["status"] == "True"
    assert condition(body, kube.SYNCED)["status"] == "True"

    secret = apiserver.get("tenants", "acme-chat-token")
    token = token_in_secret(apiserver, body)
    assert applications.find(token).name == "ACME support"
    assert base64.b64decode(secret["data"]["apiUrl"]).decode() == API_URL
    [owner] = secret["metadata"]["ownerReferences"]
    assert owner["uid"] == body["metadata"]["uid"] and owner["kind"] == "Application" and owner["controller"]
    # What the operator sent is a valid Secret, and the status it wrote fits the CRD's schema.
    kubernetes_validate.validate(secret, "1.30.0", strict=True)
    jsonschema.validate(body, crd_schema)


def test_resume_of_a_provisioned_resource_changes_nothing(reconciler, apiserver):
    body = application()
    run(reconciler.apply, body)
    before = apiserver.get("tenants", kube.secret_name(body["metadata"]["name"]))
    outcome = run(reconciler.apply, body)
    assert outcome == Outcome()  # no status change, no events
    assert apiserver.get("tenants", kube.secret_name(body["metadata"]["name"])) == before


def test_rename_follows_the_spec(reconciler, apiserver, applications):
    body = application(name="First")
    run(reconciler.apply, body)
    outcome = run(reconciler.apply, bump(body, name="Second"))
    assert reasons(outcome) == ["Renamed"]
    assert applications.find(token_in_secret(apiserver, body)).name == "Second"
    assert body["status"]["observedGeneration"] == 2
    assert condition(body, kube.SYNCED)["observedGeneration"] == 2


def test_an_invalid_rename_is_refused_once_and_the_tenant_keeps_working(reconciler, apiserver, applications):
    body = application(name="Good")
    run(reconciler.apply, body)
    ready_since = condition(body, kube.READY)["lastTransitionTime"]

    outcome = run(reconciler.apply, bump(body, name="\u00a0"))  # passes the CRD pattern, not the API's rule

    assert outcome.permanent and outcome.failure == "InvalidSpec"
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "InvalidSpec")]
    assert body["status"]["phase"] == FAILED
    assert condition(body, kube.SYNCED)["status"] == "False"
    assert "spec.name" in condition(body, kube.SYNCED)["message"]
    assert condition(body, kube.READY)["status"] == "True"
    assert condition(body, kube.READY)["lastTransitionTime"] == ready_since
    assert applications.find(token_in_secret(apiserver, body)).name == "Good"
    # The same problem again (operator restart) posts no second event.
    assert run(reconciler.apply, body).events == ()
    # Fixing the spec heals it.
    fixed = run(reconciler.apply, bump(body, name="Better"))
    assert fixed.failure is None and body["status"]["phase"] == READY


def test_an_invalid_name_at_creation_fails_without_creating_anything(reconciler, apiserver, crd_schema):
    body = application(name="\u2003")
    outcome = run(reconciler.apply, body)
    assert outcome.permanent
    assert body["status"]["phase"] == FAILED
    assert condition(body, kube.READY)["status"] == "False"
    assert apiserver.get("tenants", kube.secret_name(body["metadata"]["name"])) is None
    jsonschema.validate(body, crd_schema)


def test_adopting_an_existing_application(reconciler, apiserver, applications):
    existing, _ = applications.create("from the REST API")
    body = application(name="Adopted", existingToken=existing.token)
    outcome = run(reconciler.apply, body)
    assert reasons(outcome) == ["Adopted", "Renamed", "SecretWritten"]
    assert token_in_secret(apiserver, body) == existing.token
    assert applications.find(existing.token).name == "Adopted"


def test_adopting_a_token_nobody_has_fails_permanently(reconciler):
    body = application(existingToken="unknown-token")
    outcome = run(reconciler.apply, body)
    assert outcome.permanent and outcome.failure == "ApplicationNotFound"
    assert body["status"]["phase"] == FAILED


def test_a_foreign_secret_of_the_same_name_is_never_overwritten(reconciler, apiserver):
    body = application()
    name = kube.secret_name(body["metadata"]["name"])
    foreign = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "tenants"},
        "data": {"token": base64.b64encode(b"someone else's").decode()},
    }
    apiserver.put(foreign)
    outcome = run(reconciler.apply, body)
    assert outcome.failure == "SecretConflict" and outcome.retry_after and not outcome.permanent
    assert body["status"]["phase"] == FAILED
    assert apiserver.get("tenants", name)["data"] == foreign["data"]
    # Once the other Secret is gone, the retry provisions.
    apiserver.delete("tenants", name)
    assert run(reconciler.apply, body, retry=1).failure is None
    assert body["status"]["phase"] == READY


def test_refresh_restores_a_name_changed_through_the_rest_api(reconciler, apiserver, applications):
    body = application(name="Declared")
    run(reconciler.apply, body)
    token = token_in_secret(apiserver, body)
    applications.rename(token, "Changed by hand")
    outcome = run(reconciler.refresh, body)
    assert reasons(outcome) == ["Renamed"]
    assert applications.find(token).name == "Declared"


def test_refresh_restores_a_deleted_secret(reconciler, apiserver):
    body = application()
    run(reconciler.apply, body)
    token = token_in_secret(apiserver, body)
    apiserver.delete("tenants", kube.secret_name(body["metadata"]["name"]))
    outcome = run(reconciler.refresh, body)
    assert reasons(outcome) == ["SecretRestored"]
    assert token_in_secret(apiserver, body) == token


def test_refresh_reports_an_application_deleted_behind_its_back(reconciler, apiserver, applications, crd_schema):
    body = application()
    run(reconciler.apply, body)
    applications.delete(token_in_secret(apiserver, body))

    outcome = run(reconciler.refresh, body)

    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "ApplicationMissing")]
    assert body["status"]["phase"] == FAILED
    assert condition(body, kube.READY)["reason"] == "ApplicationMissing"
    assert run(reconciler.refresh, body) == Outcome()  # reported once
    jsonschema.validate(body, crd_schema)


def test_refresh_leaves_resources_with_a_pending_change_alone(reconciler):
    body = application()
    run(reconciler.apply, body)
    bump(body, name="not applied yet")
    assert run(reconciler.refresh, body) == Outcome()
    failed = application(existingToken="unknown-token")
    run(reconciler.apply, failed)
    assert run(reconciler.refresh, failed) == Outcome()


def test_a_retained_secret_is_not_handed_to_a_different_tenant(reconciler, apiserver):
    body = application("reused-name")
    run(reconciler.apply, body)
    run(reconciler.finalize, body)
    newcomer = application("reused-name")  # same name, no existingToken: would be a new application
    outcome = run(reconciler.apply, newcomer)
    assert outcome.failure == "SecretConflict"
    assert token_in_secret(apiserver, newcomer) == token_in_secret(apiserver, body)


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_deleting_a_resource_that_never_provisioned(reconciler, policy):
    body = application(existingToken="unknown-token", deletionPolicy=policy)
    run(reconciler.apply, body)
    run(reconciler.mark_deleting, body)
    assert run(reconciler.finalize, body).failure is None


def test_crash_before_the_secret_is_retried_with_the_same_application(reconciler, apiserver, applications):
    body = application()
    apiserver.fail_next.append(("POST", 500))  # the row is committed, the Secret write fails
    failed = run(reconciler.apply, body)
    assert failed.failure == "Unavailable" and failed.retry_after and not failed.permanent
    assert body["status"]["phase"] == PENDING
    assert condition(body, kube.SYNCED)["reason"] == "Unavailable"

    retried = run(reconciler.apply, body, retry=1)

    assert retried.failure is None and body["status"]["phase"] == READY
    token = token_in_secret(apiserver, body)
    assert applications.find(token) is not None
    assert len(applications.rows) == 1  # one application: the first attempt's
    assert "Created" not in reasons(retried)  # the application came from the first attempt


def test_a_tenant_deleted_behind_its_back_is_never_silently_replaced(reconciler, apiserver, applications):
    body = application()
    run(reconciler.apply, body)
    token = token_in_secret(apiserver, body)
    applications.delete(token)

    # A resumed operator or a spec change must not create an empty tenant with a new token.
    outcome = run(reconciler.apply, bump(body, name="Renamed after deletion"))

    assert outcome.permanent and outcome.failure == "ApplicationMissing"
    assert body["status"]["phase"] == FAILED
    assert condition(body, kube.READY)["status"] == "False"
    assert not applications.rows  # none created in its place
    assert token_in_secret(apiserver, body) == token
