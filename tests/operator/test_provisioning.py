"""The provisioning logic where MySQL and Redis themselves matter: concurrent creates and adoptions (one row, one
owner), what each deletion policy removes or keeps, counts after the count sync. The rules run on fakes in
tests/operator/rules/test_provisioning.py."""

from __future__ import annotations

import threading
import uuid

from sqlalchemy import func, select

from chat_common.schema.tables import applications as applications_table
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


# -- adoption, on the real tables -----------------------------------------------------------------
def _owner(engine, application_id: int) -> str | None:
    with engine.connect() as conn:
        query = select(applications_table.c.owner_uid).where(applications_table.c.id == application_id)
        return conn.execute(query).scalar_one()


def test_two_resources_adopting_at_once_one_wins(provisioner, applications, op_engine):
    tenant, _ = applications.create("contested")
    contenders = [uid() for _ in range(8)]
    outcomes: dict[str, str] = {}

    def adopt(resource: str) -> None:
        try:
            provisioner.provision(resource, Spec(name="contested", existing_token=tenant.token))
            outcomes[resource] = "adopted"
        except Rejected as exc:
            outcomes[resource] = exc.reason

    threads = [threading.Thread(target=adopt, args=(r,)) for r in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r, outcome in outcomes.items() if outcome == "adopted"]
    assert len(winners) == 1 and _owner(op_engine, tenant.id) == winners[0]
    assert sorted(outcomes.values()).count("AdoptionRefused") == len(contenders) - 1
