"""The reconciler's handling of the tenant-management fields (suspended, rotateToken, previousTokenGraceSeconds,
limits) on the fake tenancy store; the real Kubernetes client against the stand-in API server.

Each spec change is applied, applied again (idempotent: no second rotation, no second event), retried after a
failure, and leaves the status, conditions, events and token Secret the CRD documents.
"""

from __future__ import annotations

import time

import jsonschema

from chat_common.tenancy.applications import TenantLimits
from chat_operator import kube
from chat_operator.reconciler import ACTIVE, READY, SUSPENDED, Outcome
from tests.operator.conftest import application
from tests.operator.test_reconciler import bump, condition, reasons, run, token_in_secret
from tests.operator.test_tenant_management import gauge, secret_data


def test_suspend_and_resume_through_the_spec(reconciler, apiserver, applications, provisioned, crd_schema):
    body, app = provisioned
    assert body["status"]["state"] == ACTIVE and body["status"]["suspended"] is False
    assert condition(body, kube.SUSPENDED)["status"] == "False"

    outcome = run(reconciler.apply, bump(body, suspended=True))
    assert reasons(outcome) == ["Suspended"]
    assert applications.find(app.token).suspended  # the data plane follows
    assert (body["status"]["state"], body["status"]["suspended"], body["status"]["phase"]) == (SUSPENDED, True, READY)
    assert condition(body, kube.SUSPENDED)["status"] == "True"
    assert condition(body, kube.READY)["status"] == "True"  # provisioned, just suspended
    jsonschema.validate(body, crd_schema)
    assert gauge("chat_tenants_suspended") >= 1

    assert run(reconciler.apply, body) == Outcome()  # again: nothing to do, no second event

    resumed = run(reconciler.apply, bump(body, suspended=False))
    assert reasons(resumed) == ["Resumed"]
    assert not applications.find(app.token).suspended
    assert body["status"]["state"] == ACTIVE
    assert token_in_secret(apiserver, body) == app.token  # nothing else changed


def test_the_spec_wins_over_a_suspension_changed_through_the_rest_api(reconciler, applications, provisioned):
    body, app = provisioned
    applications.set_suspended(app.id, True)  # e.g. an admin used POST /applications/{token}/suspend
    outcome = run(reconciler.refresh, body)
    assert reasons(outcome) == ["Resumed"]
    assert not applications.find(app.token).suspended


def test_rotation_writes_both_tokens_and_reports_the_grace_period(
    reconciler, apiserver, applications, provisioned, crd_schema
):
    body, app = provisioned
    outcome = run(reconciler.apply, bump(body, rotateToken=1, previousTokenGraceSeconds=3600))

    assert reasons(outcome) == ["TokenRotated", "SecretWritten"]
    data = secret_data(apiserver, body)
    assert data["previousToken"] == app.token and data["token"] != app.token
    rotated = applications.find(data["token"])
    assert rotated.id == app.id and rotated.token_generation == 1
    assert applications.find(app.token).id == app.id  # the old token still names it (grace period)
    expires = data["previousTokenExpiresAt"]
    assert abs(time.mktime(time.strptime(expires, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone - time.time() - 3600) < 60
    status = body["status"]
    assert status["tokenGeneration"] == 1 and status["previousTokenExpiresAt"] == expires
    assert status["tokenRotatedAt"]
    assert condition(body, kube.TOKEN_ROTATING)["status"] == "True"
    assert expires in condition(body, kube.TOKEN_ROTATING)["message"]
    jsonschema.validate(body, crd_schema)


def test_a_rotation_is_applied_once_however_often_the_reconcile_runs(reconciler, apiserver, provisioned):
    body, _ = provisioned
    run(reconciler.apply, bump(body, rotateToken=1))
    token = token_in_secret(apiserver, body)
    assert run(reconciler.apply, body) == Outcome()
    assert run(reconciler.refresh, body).events == ()
    assert token_in_secret(apiserver, body) == token


def test_a_rotation_interrupted_before_the_secret_is_finished_by_the_retry(
    reconciler, apiserver, applications, provisioned
):
    body, app = provisioned
    apiserver.fail_next.append(("PATCH", 500))  # the rotation is committed, the Secret write fails
    failed = run(reconciler.apply, bump(body, rotateToken=1))
    assert failed.failure == "Unavailable" and failed.retry_after
    assert token_in_secret(apiserver, body) == app.token  # the Secret still has the old token …
    assert applications.find(app.token) is not None  # … which still works

    retried = run(reconciler.apply, body, retry=1)

    assert retried.failure is None
    data = secret_data(apiserver, body)
    assert data["previousToken"] == app.token  # rotated once: the old token is the previous one, not lost
    assert applications.find(data["token"]).token_generation == 1
    assert "TokenRotated" not in reasons(retried)  # the rotation came from the first attempt


def test_the_former_token_leaves_the_secret_when_its_grace_period_ends(
    reconciler, apiserver, applications, provisioned
):
    body, app = provisioned
    run(reconciler.apply, bump(body, rotateToken=1, previousTokenGraceSeconds=1))
    assert "previousToken" in secret_data(apiserver, body)
    time.sleep(1.2)
    outcome = run(reconciler.refresh, body)
    assert "PreviousTokenExpired" in reasons(outcome) and "SecretRestored" in reasons(outcome)
    assert set(secret_data(apiserver, body)) == {"token", "apiUrl"}
    assert "previousTokenExpiresAt" not in body["status"]
    assert condition(body, kube.TOKEN_ROTATING)["status"] == "False"
    assert applications.find(app.token) is None  # the API answers 404 for it now


def test_a_rotation_through_the_rest_api_reaches_the_secret(reconciler, apiserver, applications, provisioned):
    body, app = provisioned
    rotated, _ = applications.rotate_token(app.id, 600)
    outcome = run(reconciler.refresh, body)
    assert reasons(outcome) == ["SecretRestored"]
    data = secret_data(apiserver, body)
    assert (data["token"], data["previousToken"]) == (rotated.token, app.token)
    assert body["status"]["tokenGeneration"] == 1
    # spec.rotateToken 1 is then already satisfied: no second rotation.
    assert "TokenRotated" not in reasons(run(reconciler.apply, bump(body, rotateToken=1)))


def test_an_adopted_tenant_is_found_again_after_its_token_was_rotated_away(reconciler, apiserver, applications):
    existing, _ = applications.create("made over REST")
    body = application(name="Adopted", existingToken=existing.token)
    run(reconciler.apply, body)
    run(reconciler.apply, bump(body, rotateToken=1, previousTokenGraceSeconds=0))
    assert applications.find(existing.token) is None  # spec.existingToken names nothing any more
    outcome = run(reconciler.refresh, body)
    assert outcome.failure is None and body["status"]["phase"] == READY
    assert applications.find(token_in_secret(apiserver, body)).id == existing.id


def test_limits_follow_the_spec(reconciler, applications, provisioned):
    body, app = provisioned
    outcome = run(reconciler.apply, bump(body, limits={"requestsPerSecond": 20, "maxChats": 100}))
    assert reasons(outcome) == ["LimitsChanged"]
    assert (
        "requestsPerSecond=20" in outcome.events[0].message and "maxMessageBytes=default" in outcome.events[0].message
    )
    assert applications.find(app.token).limits == TenantLimits(20, 100, None)
    assert run(reconciler.apply, body) == Outcome()
    cleared = run(reconciler.apply, bump(body, limits=None))
    assert reasons(cleared) == ["LimitsChanged"]
    assert applications.find(app.token).limits == TenantLimits()


def test_cors_origins_follow_the_spec(reconciler, applications, provisioned):
    body, app = provisioned
    origins = ["https://chat.example", "http://127.0.0.1:8000"]
    outcome = run(reconciler.apply, bump(body, corsOrigins=origins))
    assert reasons(outcome) == ["CorsOriginsChanged"]
    assert "https://chat.example, http://127.0.0.1:8000" in outcome.events[0].message
    assert applications.find(app.token).cors_origins == tuple(origins)
    assert reasons(run(reconciler.apply, bump(body, corsOrigins=list(origins)))) == []  # unchanged: no UPDATE
    assert reasons(run(reconciler.apply, bump(body, corsOrigins=[]))) == ["CorsOriginsChanged"]
    assert applications.find(app.token).cors_origins == ()  # none allowed
    assert reasons(run(reconciler.apply, bump(body, corsOrigins=None))) == ["CorsOriginsChanged"]
    assert applications.find(app.token).cors_origins is None  # the deployment's
    refused = run(reconciler.apply, bump(body, corsOrigins=["https://chat.example/path"]))
    assert refused.permanent and refused.failure == "InvalidSpec"
    assert "corsOrigins" in condition(body, kube.SYNCED)["message"]


def test_invalid_management_fields_fail_permanently_without_touching_the_tenant(reconciler, applications, provisioned):
    body, app = provisioned
    # What the CRD would refuse, should it be bypassed: the operator refuses it too.
    outcome = run(reconciler.apply, bump(body, limits={"maxChats": 0}))
    assert outcome.permanent and outcome.failure == "InvalidSpec"
    assert (
        "maxChats" in condition(body, kube.SYNCED)["message"] or "max_chats" in condition(body, kube.SYNCED)["message"]
    )
    assert applications.find(app.token).limits == TenantLimits()
