"""Application-create idempotency keys on the real MariaDB and Redis: scoped to the caller, bound to the request.

Two API apps on one database, each with its own admin key (two callers), and the operator's provisioning over the
same tables: a key one caller used names nothing for the other, the operator's ``k8s:<uid>`` key (visible to anyone
who can read the resource) names nothing through the API, and the same key with another name is a 409.
"""

import uuid

import falcon.testing
import pytest
import pytest_asyncio
import redis
from sqlalchemy import create_engine, select

from chat_api.app import build_service, create_app
from chat_common.schema.tables import applications
from chat_common.tenancy.applications import build_applications
from chat_operator.provisioning import Provisioner, Spec, idempotency_key

on_module_loop = pytest.mark.asyncio(loop_scope="module")


def _client(namespace, admin_key: str):
    settings = namespace.settings.__class__(**{**namespace.settings.__dict__, "admin_api_key": admin_key})
    service, readiness, lifecycle, streams = build_service(settings)
    return falcon.testing.ASGIConductor(create_app(service, settings, readiness, lifecycle, streams))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def callers(namespace):
    async with (
        _client(namespace, "admin-key-one-0123456789") as one,
        _client(namespace, "admin-key-two-9876543210") as two,
    ):
        yield {
            "one": (one, {"Authorization": "Bearer admin-key-one-0123456789"}),
            "two": (two, {"Authorization": "Bearer admin-key-two-9876543210"}),
        }


@pytest.fixture(scope="module")
def provisioner(namespace):
    engine = create_engine(namespace.settings.database_url)
    client = redis.Redis.from_url(namespace.settings.redis_url)
    applications_ = build_applications(namespace.settings, engine, client)
    yield Provisioner(applications_)
    engine.dispose()
    client.close()


async def _create(callers, who: str, name: str, key: str, **kwargs):
    client, admin = callers[who]
    return await client.simulate_post(
        "/applications", json={"name": name}, headers={**admin, "Idempotency-Key": key}, **kwargs
    )


@on_module_loop
async def test_the_same_key_replays_for_its_caller_only(callers):
    key = f"order-{uuid.uuid4().hex[:8]}"  # a guessable key: anyone may send it
    first = await _create(callers, "one", "Acme", key)
    again = await _create(callers, "one", "Acme", key)
    assert (first.status_code, again.status_code) == (201, 200) and again.json == first.json
    stranger = await _create(callers, "two", "Acme", key)
    assert stranger.status_code == 201 and stranger.json["token"] != first.json["token"]


@on_module_loop
async def test_the_same_key_with_another_request_is_409(callers):
    key = f"order-{uuid.uuid4().hex[:8]}"
    first = await _create(callers, "one", "Acme", key)
    reused = await _create(callers, "one", "Globex", key)
    assert (reused.status_code, reused.json) == (
        409,
        {"error": "this Idempotency-Key was used for a different request"},
    )
    assert first.json["token"] not in reused.text
    client, admin = callers["one"]
    form = await client.simulate_post(
        "/applications",
        body="application%5Bname%5D=Acme",
        headers={**admin, "Idempotency-Key": key, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (form.status_code, form.json["token"]) == (200, first.json["token"])  # same request, another form


@on_module_loop
async def test_the_operators_key_is_unreachable_through_the_api(callers, provisioner, namespace):
    uid = str(uuid.uuid4())  # a resource's uid: anyone who can read the resource knows it
    operators = provisioner.provision(uid, Spec(name="tenant of the operator")).application
    for who in ("one", "two"):
        answer = await _create(callers, who, "tenant of the operator", idempotency_key(uid))
        assert answer.status_code == 201 and answer.json["token"] != operators.token
    # ...and the operator's own retry still finds its application (its key space is its own).
    again = provisioner.provision(uid, Spec(name="tenant of the operator"))
    assert (again.application.token, again.created) == (operators.token, False)
    # What the API stored is opaque: never the client's key text.
    engine = create_engine(namespace.settings.database_url)
    try:
        with engine.connect() as conn:
            stored = (
                conn.execute(select(applications.c.idempotency_key).where(applications.c.idempotency_key.like("api:%")))
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert stored and not any(uid in key for key in stored)
