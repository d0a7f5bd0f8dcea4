"""Handler decisions end to end where MySQL and Redis themselves matter (outages, the count sync, sealed tokens, what
deletion removes): real MariaDB and Redis, the real Kubernetes client against a stand-in API server. The decisions'
rules run on fakes in tests/operator/rules/; its helpers below serve both.

Each test drives an ``Application`` object through what kopf would do: call the handler's decision, merge
the status it returns into the object, let the "garbage collector" act on deletion.
"""

from __future__ import annotations

import base64

import jsonschema
from sqlalchemy import create_engine, select

from chat_common.schema.tables import applications as table
from chat_common.tenancy.applications import Applications
from chat_operator import kube
from chat_operator.provisioning import Provisioner
from chat_operator.reconciler import DELETING, PENDING, Outcome, Reconciler, Resource
from counter_cron.sync import CountSync
from tests.operator.conftest import API_URL, application
from tests.operator.rows import add_chats, rows_of


def run(step, body: dict, **kwargs) -> Outcome:
    """Call a decision on an object and merge the status it asks for, as kopf's patch would."""
    outcome = step(Resource.from_body(body), **kwargs)
    merged = {**body.get("status", {}), **outcome.status}
    body["status"] = {k: v for k, v in merged.items() if v is not None}  # null removes a field in a merge patch
    return outcome


def bump(body: dict, **spec: object) -> dict:
    """A spec change, as the API server records it."""
    body["spec"].update(spec)
    body["metadata"]["generation"] += 1
    return body


def condition(body: dict, type_: str) -> dict:
    return kube.find_condition(body["status"], type_)


def token_in_secret(apiserver, body: dict) -> str:
    secret = apiserver.get(body["metadata"]["namespace"], kube.secret_name(body["metadata"]["name"]))
    return base64.b64decode(secret["data"]["token"]).decode()


def reasons(outcome: Outcome) -> list[str]:
    return [e.reason for e in outcome.events]


def test_the_database_being_down_is_retried_not_failed(apiserver, op_namespace, op_redis, keys, secrets):
    dead = create_engine("mysql+pymysql://root@127.0.0.1:1/nothing", connect_args={"connect_timeout": 2})
    reconciler = Reconciler(Provisioner(Applications(dead, op_redis, keys)), secrets, API_URL)
    body = application()
    outcome = run(reconciler.apply, body, retry=2)
    assert outcome.failure == "Unavailable" and not outcome.permanent
    assert outcome.retry_after == 20
    assert body["status"]["phase"] == PENDING
    assert "database unavailable" in condition(body, kube.SYNCED)["message"]
    assert run(reconciler.apply, body, retry=3).events == ()  # one event per problem, not per retry


def test_redis_being_down_is_reported_without_its_address(apiserver, op_engine, keys, secrets):
    """Conditions and events are read by whoever reads the resource: the kind of fault, never host and port."""
    import redis as redis_lib

    dead = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    applications = Applications(op_engine, dead, keys)
    reconciler = Reconciler(Provisioner(applications), secrets, API_URL)
    body = application()
    # The tenant exists (MySQL is fine); creating it touches Redis (its numbering keys), which is down.
    outcome = run(reconciler.apply, body)
    message = condition(body, kube.SYNCED)["message"]
    events = " ".join(event.message for event in outcome.events)
    assert outcome.failure == "Unavailable" and "Redis unavailable" in message, message
    for text_ in (message, events):
        assert "127.0.0.1" not in text_ and ":1" not in text_ and "Error 111" not in text_


# -- timer -------------------------------------------------------------------------------------------------------


def test_refresh_reports_counts_after_the_count_sync(reconciler, apiserver, applications, op_engine, op_redis, keys):
    body = application()
    run(reconciler.apply, body)
    app = applications.find(token_in_secret(apiserver, body))
    add_chats(op_engine, op_redis, keys, app.id, [2, 9, 0])
    assert run(reconciler.refresh, body).status == {}  # not synced yet: nothing changed, nothing patched

    CountSync(op_engine, op_redis, keys).run()
    outcome = run(reconciler.refresh, body)

    assert outcome.status == {"chatsCount": 3, "messagesCount": 11}
    assert outcome.events == ()


def test_a_deleted_secret_is_restored_from_the_sealed_copy_with_no_plaintext_in_the_database(
    reconciler, apiserver, op_engine
):
    body = application()
    run(reconciler.apply, body)
    token = token_in_secret(apiserver, body)
    with op_engine.connect() as conn:
        rows = conn.execute(select(table)).all()
    assert token not in repr(rows)  # only its digest and its sealed copy (chat_common.tenancy.tokens)
    apiserver.delete("tenants", kube.secret_name(body["metadata"]["name"]))
    assert reasons(run(reconciler.refresh, body)) == ["SecretRestored"]
    assert token_in_secret(apiserver, body) == token


def test_without_the_sealing_key_a_deleted_secret_asks_for_a_rotation(
    reconciler, apiserver, op_engine, op_redis, keys, secrets
):
    body = application()
    run(reconciler.apply, body)
    apiserver.delete("tenants", kube.secret_name(body["metadata"]["name"]))
    keyless = Reconciler(Provisioner(Applications(op_engine, op_redis, keys)), secrets, API_URL)
    assert run(keyless.refresh, body).failure == "TokenUnavailable"
    body["spec"]["rotateToken"] = 1  # the way out: a token the operator draws, and so knows
    body["metadata"]["generation"] += 1
    assert run(keyless.apply, body).failure is None
    assert token_in_secret(apiserver, body)


# -- deletion ----------------------------------------------------------------------------------------------------


def test_delete_policy_removes_the_tenant_and_its_secret(
    reconciler, apiserver, applications, op_engine, op_redis, keys, crd_schema
):
    body = application(deletionPolicy="Delete")
    run(reconciler.apply, body)
    token = token_in_secret(apiserver, body)
    app = applications.find(token)
    add_chats(op_engine, op_redis, keys, app.id, [5, 5])
    op_redis.hset(keys.numbers(app.id), mapping={"id": app.id, "chats": 2})

    marked = run(reconciler.mark_deleting, body)
    assert body["status"]["phase"] == DELETING and reasons(marked) == ["Deleting"]
    jsonschema.validate(body, crd_schema)
    outcome = run(reconciler.finalize, body)
    assert reasons(outcome) == ["Deleted"] and "10 messages" in outcome.events[0].message

    assert rows_of(op_engine, app.id) == (0, 0, 0)
    assert not op_redis.exists(keys.numbers(app.id))
    assert apiserver.collect_garbage(body["metadata"]["uid"]) == [kube.secret_name(body["metadata"]["name"])]
    # A finalizer that runs again (operator restarted mid-way) finds nothing left to do.
    assert run(reconciler.finalize, body).failure is None


def test_retain_policy_keeps_the_data_and_the_token_secret(
    reconciler, apiserver, applications, op_engine, op_redis, keys
):
    body = application("keeper", name="Keeper")
    run(reconciler.apply, body)
    token = token_in_secret(apiserver, body)
    app = applications.find(token)
    add_chats(op_engine, op_redis, keys, app.id, [3])

    assert run(reconciler.mark_deleting, body) == Outcome()
    outcome = run(reconciler.finalize, body)

    assert reasons(outcome) == ["Retained"]
    assert rows_of(op_engine, app.id) == (1, 1, 3)
    assert apiserver.collect_garbage(body["metadata"]["uid"]) == []  # detached: the Secret outlives the resource
    secret = apiserver.get("tenants", "keeper-chat-token")
    assert not secret["metadata"].get("ownerReferences")
    assert secret["metadata"]["annotations"][kube.ANNOTATION_RETAINED] == body["metadata"]["uid"]

    # The tenant can be brought back under management with the retained token.
    again = application("keeper", name="Keeper again", existingToken=token)
    readopted = run(reconciler.apply, again)
    assert readopted.failure is None
    assert "Secret keeper-chat-token adopted" in [e.message for e in readopted.events]
    secret = apiserver.get("tenants", "keeper-chat-token")
    assert [r["uid"] for r in secret["metadata"]["ownerReferences"]] == [again["metadata"]["uid"]]
    assert kube.ANNOTATION_RETAINED not in (secret["metadata"].get("annotations") or {})
    assert applications.find(token).name == "Keeper again"


def test_deletion_while_the_database_is_down_is_retried(apiserver, op_redis, keys, secrets):
    dead = create_engine("mysql+pymysql://root@127.0.0.1:1/nothing", connect_args={"connect_timeout": 2})
    reconciler = Reconciler(Provisioner(Applications(dead, op_redis, keys)), secrets, API_URL)
    body = application(deletionPolicy="Delete")
    body["status"] = {"phase": DELETING}
    outcome = run(reconciler.finalize, body)
    assert outcome.failure == "Unavailable" and outcome.retry_after
    assert reasons(outcome) == ["DeleteFailed"]
