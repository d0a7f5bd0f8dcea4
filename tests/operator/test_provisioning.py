"""The provisioning logic behind the handlers, against the real MariaDB and Redis."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import func, select

from chat_common.tables import applications as applications_table
from chat_operator.provisioning import Policy, Rejected, Spec, idempotency_key
from counter_cron.sync import CountSync
from tests.operator.rows import add_chats, rows_of


def uid() -> str:
    return str(uuid.uuid4())


def count_keyed(engine, resource_uid: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count())
            .select_from(applications_table)
            .where(applications_table.c.idempotency_key == idempotency_key(resource_uid))
        ).scalar_one()


def test_create_issues_a_token_under_the_resource_uid(provisioner, applications, op_engine):
    resource = uid()
    result = provisioner.provision(resource, Spec(name="Acme"))
    assert result.created and not result.adopted and result.renamed_from is None
    assert len(result.application.token) == 32
    assert applications.find(result.application.token).name == "Acme"
    assert count_keyed(op_engine, resource) == 1


def test_re_provisioning_after_a_crash_returns_the_same_application(provisioner, op_engine):
    # The first attempt committed the row, then the operator died before writing the Secret or status.
    resource = uid()
    first = provisioner.provision(resource, Spec(name="Crashy"))
    again = provisioner.provision(resource, Spec(name="Crashy"))
    assert again.application.token == first.application.token
    assert not again.created
    assert count_keyed(op_engine, resource) == 1


def test_two_replicas_provisioning_at_once_create_one_application(provisioner, op_engine):
    resource = uid()
    tokens: list[str] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        tokens.append(provisioner.provision(resource, Spec(name="Racy")).application.token)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tokens) == 4 and len(set(tokens)) == 1
    assert count_keyed(op_engine, resource) == 1


def test_adopts_an_application_created_through_the_rest_api_and_takes_the_spec_name(provisioner, applications):
    existing, _ = applications.create("made by curl")
    result = provisioner.provision(uid(), Spec(name="Now managed", existing_token=existing.token))
    assert result.adopted and not result.created
    assert result.renamed_from == "made by curl"
    assert result.application.token == existing.token
    assert applications.find(existing.token).name == "Now managed"


def test_adopting_an_unknown_token_is_rejected(provisioner):
    with pytest.raises(Rejected) as info:
        provisioner.provision(uid(), Spec(name="x", existing_token="no-such-token"))
    assert info.value.reason == "ApplicationNotFound"


def test_a_new_name_renames_the_application(provisioner, applications):
    resource = uid()
    first = provisioner.provision(resource, Spec(name="Old name"))
    renamed = provisioner.provision(resource, Spec(name="New name"))
    assert renamed.renamed_from == "Old name"
    assert renamed.application.token == first.application.token
    assert applications.find(first.application.token).name == "New name"


@pytest.mark.parametrize(
    "name",
    ["tab\tinside", "\u00a0\u2003", "x" * 256, None, 42],
    ids=["control-character", "unicode-blank", "too-long", "missing", "not-a-string"],
)
def test_names_the_api_refuses_are_rejected_and_nothing_is_created(provisioner, op_engine, name):
    resource = uid()
    with pytest.raises(Rejected) as info:
        provisioner.provision(resource, Spec(name=name))
    assert info.value.reason == "InvalidSpec"
    assert info.value.message.startswith("spec.name")
    assert count_keyed(op_engine, resource) == 0


def test_an_invalid_rename_leaves_the_application_as_it_was(provisioner, applications):
    resource = uid()
    app = provisioner.provision(resource, Spec(name="Stable")).application
    with pytest.raises(Rejected):
        provisioner.provision(resource, Spec(name="bad\x00name"))
    assert applications.find(app.token).name == "Stable"


def test_spec_parsing_defaults_to_retain_and_refuses_unknown_policies():
    assert Spec.parse({"name": "a"}) == Spec(name="a", deletion_policy=Policy.RETAIN)
    assert Spec.parse({"name": "a", "deletionPolicy": "Delete"}).deletion_policy is Policy.DELETE
    with pytest.raises(Rejected):
        Spec.parse({"name": "a", "deletionPolicy": "Recycle"})


def test_delete_policy_removes_rows_and_redis_keys_and_nothing_else(
    provisioner, applications, op_engine, op_redis, keys
):
    doomed_uid, bystander_uid = uid(), uid()
    doomed = provisioner.provision(doomed_uid, Spec(name="Doomed", deletion_policy=Policy.DELETE)).application
    bystander = provisioner.provision(bystander_uid, Spec(name="Bystander")).application
    add_chats(op_engine, op_redis, keys, doomed.id, [3, 0, 7])
    add_chats(op_engine, op_redis, keys, bystander.id, [2])
    op_redis.hset(keys.numbers(doomed.id), mapping={"id": doomed.id, "chats": 3})
    op_redis.hset(keys.numbers(bystander.id), mapping={"id": bystander.id, "chats": 1})

    released = provisioner.release(doomed_uid, Spec(name="Doomed", deletion_policy=Policy.DELETE))

    assert released.found and released.messages_deleted == 10
    assert rows_of(op_engine, doomed.id) == (0, 0, 0)
    assert not op_redis.exists(keys.numbers(doomed.id))
    assert applications.find(doomed.token) is None
    assert rows_of(op_engine, bystander.id) == (1, 1, 2)
    assert op_redis.exists(keys.numbers(bystander.id))


def test_delete_policy_twice_is_harmless(provisioner):
    resource = uid()
    spec = Spec(name="Twice", deletion_policy=Policy.DELETE)
    provisioner.provision(resource, spec)
    assert provisioner.release(resource, spec).found
    assert not provisioner.release(resource, spec).found


def test_retain_policy_keeps_every_row_and_key(provisioner, applications, op_engine, op_redis, keys):
    resource = uid()
    app = provisioner.provision(resource, Spec(name="Keeper")).application
    add_chats(op_engine, op_redis, keys, app.id, [4, 1])
    op_redis.hset(keys.numbers(app.id), mapping={"id": app.id, "chats": 2})

    released = provisioner.release(resource, Spec(name="Keeper", deletion_policy=Policy.RETAIN))

    assert released.policy is Policy.RETAIN and released.found
    assert rows_of(op_engine, app.id) == (1, 2, 5)
    assert op_redis.exists(keys.numbers(app.id))
    assert applications.find(app.token).name == "Keeper"


def test_delete_policy_on_an_adopted_application_deletes_it(provisioner, applications, op_engine, op_redis, keys):
    existing, _ = applications.create("adopted then deleted")
    add_chats(op_engine, op_redis, keys, existing.id, [2])
    spec = Spec(name="adopted then deleted", deletion_policy=Policy.DELETE, existing_token=existing.token)
    resource = uid()
    provisioner.provision(resource, spec)
    assert provisioner.release(resource, spec).messages_deleted == 2
    assert rows_of(op_engine, existing.id) == (0, 0, 0)


def test_counts_follow_the_count_sync(provisioner, op_namespace, op_engine, op_redis, keys):
    resource = uid()
    spec = Spec(name="Counted")
    app = provisioner.provision(resource, spec).application
    add_chats(op_engine, op_redis, keys, app.id, [3, 0, 5])
    # Before the count sync runs, the cached counts (what the API shows too) are still zero.
    assert provisioner.locate(resource, spec).chats_count == 0
    assert provisioner.messages_count(app.id) == 0

    CountSync(op_engine, op_redis, keys).run()

    assert provisioner.locate(resource, spec).chats_count == 3
    assert provisioner.messages_count(app.id) == 8


def test_locate_finds_by_uid_or_by_adopted_token(provisioner, applications):
    resource = uid()
    app = provisioner.provision(resource, Spec(name="Findable")).application
    assert provisioner.locate(resource, Spec(name="Findable")).token == app.token
    assert provisioner.locate(uid(), Spec(name="Findable")) is None
    assert provisioner.locate(uid(), Spec(name="x", existing_token=app.token)).token == app.token
