"""Webhook endpoints' lifecycle (chat_common.tenancy.webhooks) against the real MariaDB, on a database of the test's
own: registration at the log's head with a sealed secret, the limit and name clashes, changes and re-enabling,
rotation with a grace period, replay (position, held rows, expired and future cursors), the operator's sync (its own
endpoints only) and an application's deletion."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from chat_common.tenancy.applications import Applications
from chat_common.tenancy.tokens import TokenSealer, new_sealing_key
from chat_common.tenancy.webhooks import (
    API,
    DISABLED,
    HEALTHY,
    K8S,
    CursorExpired,
    EndpointChanges,
    EndpointConflict,
    EndpointNotFound,
    EndpointSpec,
    SealingUnavailable,
    WebhookEndpoints,
    new_secret,
)
from chat_common.validation import Invalid
from chat_common.webhooks.egress import EgressPolicy
from chat_common.wire.events import EVENT_TYPES, record_events
from chat_common.wire.keys import RedisKeys
from tests.integration.conftest import migrated_database

POLICY = EgressPolicy()
URL = "https://hooks.example.com/chat"


@pytest.fixture(scope="module")
def database() -> Iterator[Engine]:
    with migrated_database("cs_wh") as (_, engine):
        yield engine


@pytest.fixture
def application(database: Engine) -> int:
    with database.begin() as conn:
        return conn.execute(text("INSERT INTO applications (name) VALUES ('webhooks')")).lastrowid


@pytest.fixture
def store(database: Engine) -> WebhookEndpoints:
    return WebhookEndpoints(database, TokenSealer(new_sealing_key()), POLICY, max_endpoints=3)


def spec(name: str, **fields) -> EndpointSpec:
    return EndpointSpec.parse({"name": name, "url": URL, **fields}, POLICY)


def record(engine: Engine, application: int, *chats: int) -> None:
    with engine.begin() as conn:
        record_events(conn, [(application, chat, 0, 0) for chat in chats])


def head(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT last_id FROM event_sequence")).scalar_one()


def dispatcher_disables(engine: Engine, endpoint_id: int) -> None:
    """What the dispatcher writes on a 410 (its own module does this in production)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE webhook_endpoints SET state = 'disabled', disabled_at = NOW(6), disabled_reason = '410',"
                " failing_since = NOW(6) WHERE id = :id"
            ),
            {"id": endpoint_id},
        )
        conn.execute(
            text(
                "INSERT IGNORE INTO webhook_held (application_id, endpoint_id, event_id, chat_number)"
                " SELECT application_id, id, 1, 1 FROM webhook_endpoints WHERE id = :id"
            ),
            {"id": endpoint_id},
        )


def test_an_endpoint_starts_at_the_logs_head_with_a_sealed_secret_shown_once(database, application, store):
    record(database, application, 1, 2)
    created = store.create(application, spec("orders"))
    assert created.position == head(database) > 0
    assert created.secret is not None and created.secret.startswith("whsec_")
    assert created.public()["secret"] == created.secret and created.public()["position"] == str(created.position)
    assert created.event_types == EVENT_TYPES and created.enabled and created.state == HEALTHY
    assert created.managed_by == API and created.public()["created_at"].endswith("Z")
    with database.connect() as conn:
        sealed = conn.execute(text("SELECT secret_sealed FROM webhook_endpoints WHERE id = :i"), {"i": created.id})
        assert created.secret not in sealed.scalar_one()
    listed = store.list(application)
    assert [e.name for e in listed] == ["orders"] and listed[0].secret is None and "secret" not in listed[0].public()
    assert store.signing_secrets(application, "orders") == [created.secret]
    given = new_secret()
    assert store.create(application, spec("given", secret=given, event_types=["message.created"])).secret == given
    assert store.get(application, "given").event_types == ("message.created",)


def test_names_clash_the_limit_holds_and_no_sealing_key_refuses(database, application, store):
    store.create(application, spec("a"))
    with pytest.raises(EndpointConflict, match="exists already"):
        store.create(application, spec("a"))
    store.create(application, spec("b"))
    store.create(application, spec("c"))
    with pytest.raises(EndpointConflict, match="at most 3"):
        store.create(application, spec("d"))
    with pytest.raises(SealingUnavailable, match="WEBHOOK_SEALING_KEY"):
        WebhookEndpoints(database, None, POLICY).create(application, spec("e"))


def test_changes_and_re_enabling_a_disabled_endpoint_make_it_healthy(database, application, store):
    created = store.create(application, spec("a"))
    changed = store.update(application, "a", EndpointChanges(url=URL + "/v2", event_types=("chat.created",)))
    assert changed.url == URL + "/v2" and changed.event_types == ("chat.created",)
    dispatcher_disables(database, created.id)
    disabled = store.get(application, "a")
    assert disabled.state == DISABLED and disabled.disabled_reason == "410" and disabled.failing_since is not None
    enabled = store.update(application, "a", EndpointChanges(enabled=True))
    assert enabled.state == HEALTHY and enabled.disabled_at is None and enabled.failing_since is None
    assert not store.update(application, "a", EndpointChanges(enabled=False)).enabled
    with pytest.raises(EndpointNotFound):
        store.update(application, "nope", EndpointChanges(enabled=True))
    store.delete(application, "a")
    assert store.get(application, "a") is None
    with pytest.raises(EndpointNotFound):
        store.delete(application, "a")


def test_rotation_keeps_the_former_secret_signing_for_its_grace_period(application, store):
    first = store.create(application, spec("a")).secret
    rotated = store.rotate_secret(application, "a", grace_seconds=3600)
    assert rotated.secret != first and rotated.previous_secret_expires_at is not None
    assert store.signing_secrets(application, "a") == [rotated.secret, first]
    given = new_secret()
    again = store.rotate_secret(application, "a", secret=given, grace_seconds=0)
    assert again.secret == given and again.previous_secret_expires_at is None
    assert store.signing_secrets(application, "a") == [given]
    with pytest.raises(Invalid):
        store.rotate_secret(application, "a", secret="whsec_short")


def test_replay_moves_the_position_drops_held_deliveries_and_refuses_pruned_or_future_cursors(
    database, application, store
):
    record(database, application, 1, 2, 3)
    created = store.create(application, spec("a"))
    dispatcher_disables(database, created.id)
    replayed = store.replay(application, "a", str(created.position - 3))
    assert replayed.position == created.position - 3 and replayed.state == HEALTHY and replayed.disabled_at is None
    with database.connect() as conn:
        assert (
            conn.execute(text("SELECT COUNT(*) FROM webhook_held WHERE endpoint_id = :i"), {"i": created.id}).scalar()
            == 0
        )
    with pytest.raises(Invalid, match="beyond"):
        store.replay(application, "a", head(database) + 1)
    with pytest.raises(Invalid):
        store.replay(application, "a", "-1")
    with database.begin() as conn:  # pruning: the log keeps only its newest events
        oldest = conn.execute(text("SELECT MAX(id) FROM events")).scalar_one()
        conn.execute(text("DELETE FROM events WHERE id < :o"), {"o": oldest})
    with pytest.raises(CursorExpired):
        store.replay(application, "a", 0)
    assert store.replay(application, "a", oldest - 1).position == oldest - 1


def test_the_operator_syncs_its_own_endpoints_and_leaves_the_apis_alone(application, store):
    store.create(application, spec("by-api"))
    secret = new_secret()
    first = store.sync_managed(application, [spec("k1", secret=secret), spec("k2", secret=new_secret())])
    assert first.created == ("k1", "k2") and not first.updated and not first.deleted
    assert {e.name: e.managed_by for e in first.endpoints} == {"by-api": API, "k1": K8S, "k2": K8S}
    assert (
        store.sync_managed(
            application, [spec("k1", secret=secret), spec("k2", secret=store.signing_secrets(application, "k2")[0])]
        ).updated
        == ()
    )
    rotated = new_secret()
    second = store.sync_managed(application, [spec("k1", secret=rotated, enabled=False)])
    assert second.updated == ("k1",) and second.deleted == ("k2",) and not second.created
    assert store.signing_secrets(application, "k1") == [rotated, secret]
    assert [e.name for e in store.list(application)] == ["by-api", "k1"]
    with pytest.raises(EndpointConflict, match="admin API"):
        store.sync_managed(application, [spec("by-api", secret=secret)])
    with pytest.raises(EndpointConflict, match=r"spec\.webhooks"):
        store.update(application, "k1", EndpointChanges(enabled=True))
    with pytest.raises(EndpointConflict, match="at most 3"):
        store.sync_managed(application, [spec(f"k{i}", secret=secret) for i in range(3)])
    with pytest.raises(Invalid, match="more than once"):
        store.sync_managed(application, [spec("k1", secret=secret), spec("k1", secret=secret)])
    dispatcher_disables(store.engine, store.get(application, "k1").id)
    store.sync_managed(application, [spec("k1", secret=rotated, enabled=True)])  # turned on: healthy again
    assert store.get(application, "k1").state == HEALTHY
    dispatcher_disables(store.engine, store.get(application, "k1").id)
    store.sync_managed(application, [spec("k1", secret=rotated, enabled=True)])  # enabled all along: stays disabled
    assert store.get(application, "k1").state == DISABLED
    waiting = store.sync_managed(application, [spec("k1"), spec("k9")])  # their Secrets are missing
    assert waiting.waiting == ("k9",) and not waiting.created and store.get(application, "k9") is None
    assert store.signing_secrets(application, "k1") == [rotated, secret]  # kept
    no_key = WebhookEndpoints(store.engine, None, POLICY)
    with pytest.raises(SealingUnavailable):
        no_key.sync_managed(application, [spec("k1"), spec("k8", secret=secret)])
    assert store.sync_managed(application, []).deleted == ("k1",)
    assert [e.name for e in store.list(application)] == ["by-api"]


def test_deleting_the_application_deletes_its_endpoints(database, redis_client, store):
    applications = Applications(database, client=redis_client, keys=RedisKeys("wh-test:"))  # no such keys
    created, _ = applications.create("to delete")
    store.create(created.id, spec("a"))
    applications.delete_application(created)
    assert store.list(created.id) == []
