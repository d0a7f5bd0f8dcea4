"""Tenant rules of the service layer on fakes: suspension, token rotation, per-tenant limits, usage, and the tenant
directory's cache (staleness, size, negative entries, one query per miss, stale-if-error) on a fake database."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat_api.adapters.tenants import TenantDirectory
from chat_api.model import Conflict, DatabaseUnavailable, Invalid, NotFound, RateLimited, Suspended
from chat_api.services import Limits
from chat_common.tenancy.applications import TENANT_BY_TOKEN, TOKEN_DIGESTS, TenantLimits
from chat_common.tenancy.tokens import token_digest
from tests.unit.fakes import build


# -- suspension ---------------------------------------------------------------------------------------------------
async def test_a_suspended_tenant_is_refused_on_every_tenant_scoped_operation(service, world):
    app = world.application()
    await service.create_chat(app.token, "room")
    await service.create_message(app.token, 1, "hello")
    world.deliver()
    await service.suspend_application(app.token, True)
    operations = [
        service.get_application(app.token),
        service.rename_application(app.token, "x"),
        service.create_chat(app.token, "x"),
        service.get_chat(app.token, 1),
        service.list_chats(app.token),
        service.rename_chat(app.token, 1, "x"),
        service.create_message(app.token, 1, "x"),
        service.get_message(app.token, 1, 1),
        service.list_messages(app.token, 1),
        service.edit_message(app.token, 1, 1, "x"),
        service.search_messages(app.token, 1, "hello"),
    ]
    for operation in operations:
        with pytest.raises(Suspended, match="application suspended"):
            await operation
    assert world.payloads() == []  # nothing numbered, nothing published


async def test_admin_operations_work_on_a_suspended_tenant_and_resume_restores_service(service, world):
    app = world.application()
    await service.create_chat(app.token, "room")
    world.deliver()
    suspended = await service.suspend_application(app.token, True)
    assert suspended.suspended and suspended.admin()["state"] == "suspended"
    assert (await service.usage(app.token)).public()["state"] == "suspended"
    assert (await service.set_limits(app.token, {"max_chats": 5})).limits.max_chats == 5
    resumed = await service.suspend_application(app.token, False)
    assert not resumed.suspended
    assert (await service.get_chat(app.token, 1)).name == "room"  # data intact
    assert await service.create_chat(app.token, "next") == (2, False)


async def test_an_unknown_token_is_404_for_admin_operations_too(service):
    for operation in (
        service.suspend_application("nobody", True),
        service.rotate_token("nobody"),
        service.set_limits("nobody", {}),
        service.usage("nobody"),
    ):
        with pytest.raises(NotFound, match="application not found"):
            await operation


# -- token rotation -------------------------------------------------------------------------------------------------
async def test_both_tokens_number_into_one_sequence_during_the_grace_period(service, world):
    app = world.application()
    await service.create_chat(app.token, "before")
    rotated = await service.rotate_token(app.token, 60)
    assert rotated.token != app.token and rotated.previous_token == app.token
    assert rotated.admin()["previous_token_expires_at"] is not None
    numbers = [
        await service.create_chat(app.token, "old token"),
        await service.create_chat(rotated.token, "new token"),
        await service.create_chat(app.token, "old again"),
    ]
    assert numbers == [(2, False), (3, False), (4, False)]
    assert {p["application_id"] for p in world.payloads("chats")} == {app.id}


async def test_a_retry_with_the_new_token_replays_a_create_made_with_the_old_one(service, world):
    app = world.application()
    first = await service.create_chat(app.token, "room", "key-1")
    rotated = await service.rotate_token(app.token, 60)
    assert await service.create_chat(rotated.token, "room", "key-1") == (first[0], True)


async def test_reads_with_the_old_token_see_the_same_data(service, world):
    app = world.application()
    await service.create_chat(app.token, "room")
    await service.create_message(app.token, 1, "hello world")
    world.deliver()
    await service.rotate_token(app.token, 60)
    assert (await service.get_chat(app.token, 1)).name == "room"
    assert [m.body for m in (await service.list_messages(app.token, 1)).items] == ["hello world"]
    assert [h.body for h in (await service.search_messages(app.token, 1, "world")).items] == ["hello world"]


async def test_the_former_token_never_learns_the_new_one(service, world):
    # Rotating a leaked token must lock the leaker out: during the grace period the former token still creates
    # and reads, but the application read or renamed through it shows that former token, never the new one.
    app = world.application()
    rotated = await service.rotate_token(app.token, 60)
    seen = await service.get_application(app.token)
    assert (seen.token, seen.previous_token) == (app.token, None)
    renamed = await service.rename_application(app.token, "renamed by the former token")
    assert (renamed.token, renamed.name) == (app.token, "renamed by the former token")
    assert rotated.token not in repr(seen) + repr(renamed)
    assert (await service.get_application(rotated.token)).token == rotated.token  # the holder of the new one sees it


def test_the_former_token_never_learns_the_new_one_over_http():
    from falcon import testing

    from chat_api.app import create_app
    from chat_common.config import Settings

    service, world = build()
    client = testing.TestClient(create_app(service, Settings(admin_api_key="secret-key"), {}, lifecycle=None))
    old = world.application().token
    admin = {"Authorization": "Bearer secret-key"}
    new = client.simulate_post(f"/applications/{old}/rotate-token", headers=admin, json={"grace_seconds": 60})
    new = new.json["token"]
    for answer in (
        client.simulate_get(f"/applications/{old}"),
        client.simulate_patch(f"/applications/{old}", json={"name": "x"}),
        client.simulate_put(f"/applications/{old}", json={"name": "y"}),
    ):
        assert answer.status_code == 200 and answer.json["token"] == old and new not in answer.text
    assert client.simulate_get(f"/applications/{new}").json["token"] == new


async def test_a_rotation_without_grace_is_immediate(service, world):
    app = world.application()
    await service.get_application(app.token)  # cached in the directory
    rotated = await service.rotate_token(app.token, 0)
    for call in (service.get_application(app.token), service.list_chats(app.token)):
        with pytest.raises(NotFound):
            await call
    assert (await service.get_application(rotated.token)).token == rotated.token


async def test_the_old_token_is_404_once_its_grace_period_ended(service, world):
    app = world.application()
    rotated = await service.rotate_token(app.token, 0)
    with pytest.raises(NotFound, match="application not found"):
        await service.create_chat(app.token, "x")
    with pytest.raises(NotFound):
        await service.suspend_application(app.token, True)  # the admin side does not know it either
    assert await service.create_chat(rotated.token, "x") == (1, False)


@pytest.mark.parametrize("grace", [-1, "soon", 10**9, True])
async def test_a_bad_grace_period_is_invalid(service, world, grace):
    with pytest.raises(Invalid, match="grace_seconds"):
        await service.rotate_token(world.application().token, grace)


# -- limits ---------------------------------------------------------------------------------------------------------
async def test_max_chats_refuses_exactly_at_the_limit_without_burning_a_number(service, world):
    app = world.application()
    await service.set_limits(app.token, {"max_chats": 2})
    assert [await service.create_chat(app.token, f"c{i}") for i in range(2)] == [(1, False), (2, False)]
    with pytest.raises(Conflict, match="limit of 2 chats"):
        await service.create_chat(app.token, "third")
    await service.set_limits(app.token, {"max_chats": 3})
    assert await service.create_chat(app.token, "third") == (3, False)  # no gap: nothing was burnt


async def test_max_message_bytes_counts_utf8_bytes_on_create_and_edit(service, world):
    app = world.application()
    await service.set_limits(app.token, {"max_message_bytes": 4})
    await service.create_chat(app.token, "c")
    assert await service.create_message(app.token, 1, "éé") == (1, False)  # 4 bytes
    with pytest.raises(Invalid, match="limit of 4 bytes"):
        await service.create_message(app.token, 1, "ééa")
    world.deliver()
    with pytest.raises(Invalid, match="limit of 4 bytes"):
        await service.edit_message(app.token, 1, 1, "abcde")


async def test_the_tenant_rate_limit_overrides_the_default_and_is_per_tenant():
    service, world = build(Limits(rate_limit_per_second=100))
    busy, quiet = world.application("busy"), world.application("quiet")
    await service.set_limits(busy.token, {"requests_per_second": 2})
    await service.get_application(busy.token)
    await service.list_chats(busy.token)
    with pytest.raises(RateLimited, match="more than 2 requests per second") as caught:
        await service.list_chats(busy.token)
    assert caught.value.retry_after == 1
    for _ in range(10):
        await service.list_chats(quiet.token)  # the default (100) for the other tenant
    world.rate_limiter.next_second()
    await service.list_chats(busy.token)  # a new second, a new budget


async def test_rate_limits_count_every_token_of_an_application_together():
    service, world = build(Limits(rate_limit_per_second=3))
    app = world.application()
    rotated = await service.rotate_token(app.token, 60)
    await service.list_chats(app.token)
    await service.list_chats(rotated.token)
    await service.list_chats(app.token)
    with pytest.raises(RateLimited):
        await service.list_chats(rotated.token)


async def test_no_rate_limit_no_counting(service, world):
    app = world.application()
    for _ in range(20):
        await service.list_chats(app.token)
    assert world.rate_limiter.calls == []


@pytest.mark.parametrize(
    "limits",
    [[], {"max_chats": 0}, {"max_chats": -1}, {"max_chats": "five"}, {"max_chats": 1.5}, {"max_chats": True}, {"x": 1}],
    ids=["not-object", "zero", "negative", "string", "float", "bool", "unknown"],
)
async def test_bad_limits_are_invalid(service, world, limits):
    with pytest.raises(Invalid):
        await service.set_limits(world.application().token, limits)


async def test_limits_and_grace_accept_whole_numbers_written_with_a_fraction(service, world):
    # 5.0 is the integer 5 to JSON Schema 2020-12, so the OpenAPI document (3.2) declares it valid: so does the API.
    app = world.application()
    assert (await service.set_limits(app.token, {"max_chats": 5.0})).limits == TenantLimits(None, 5, None)
    rotated = await service.rotate_token(app.token, 60.0)
    assert rotated.previous_token == app.token


async def test_put_replaces_and_patch_merges_limits(service, world):
    app = world.application()
    await service.set_limits(app.token, {"max_chats": 5, "requests_per_second": 9})
    merged = await service.set_limits(app.token, {"max_message_bytes": 100}, merge=True)
    assert merged.limits == TenantLimits(9, 5, 100)
    cleared = await service.set_limits(app.token, {"max_chats": None}, merge=True)
    assert cleared.limits == TenantLimits(9, None, 100)
    replaced = await service.set_limits(app.token, {"max_chats": 1})
    assert replaced.limits == TenantLimits(None, 1, None)


async def test_usage_reports_counts_activity_and_state(service, world):
    app = world.application()
    world.applications.usage_of[app.id] = (12, 1_700_000_000.0)
    usage = (await service.usage(app.token)).public()
    assert usage == {"chats": 0, "messages": 12, "last_activity_at": "2023-11-14T22:13:20Z", "state": "active"}


# -- the tenant directory (cache) ----------------------------------------------------------------------------------
class FakeDatabase:
    """Answers TENANT_BY_TOKEN and TOKEN_DIGESTS from a dict of rows; counts queries; can be told to fail or to wait."""

    COLUMNS = [c.name for c in TENANT_BY_TOKEN.selected_columns]

    def __init__(self) -> None:
        self.table: dict[str, dict] = {}
        self.queries = 0  # lookups of one token (TENANT_BY_TOKEN)
        self.digest_reads = 0  # reads of every digest (TOKEN_DIGESTS)
        self.down = False
        self.gate: asyncio.Event | None = None

    def add(self, token: str, app_id: int, **values: object) -> None:
        row = dict.fromkeys(self.COLUMNS)
        row.update(
            id=app_id, token_digest=token_digest(token), name="t", chats_count=0, suspended=0, token_generation=0
        )
        row.update(values)
        self.table[token] = row

    async def rows_of(self, token: str) -> list[tuple]:
        self.queries += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise DatabaseUnavailable("gone")
        row = self.table.get(token)
        return [tuple(row[c] for c in self.COLUMNS)] if row else []

    async def rows(self, statement, params: dict | None = None) -> list[tuple]:
        if statement is TOKEN_DIGESTS:  # every application's digests (current ones: no grace periods here)
            self.digest_reads += 1
            if self.gate is not None:
                await self.gate.wait()
            if self.down:
                raise DatabaseUnavailable("gone")
            return [(row["token_digest"], None) for row in self.table.values()]
        assert statement is TENANT_BY_TOKEN
        assert set(params) == {"digest"}  # the token itself never reaches MySQL
        named = [t for t in self.table if token_digest(t) == params["digest"]]
        return await self.rows_of(named[0] if named else "")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def directory():
    db, clock = FakeDatabase(), Clock()
    return TenantDirectory(db, ttl=2.0, max_entries=3, clock=clock), db, clock


async def test_a_hit_costs_no_query_and_a_change_shows_within_the_bound(directory):
    tenants, db, clock = directory
    db.add("tok", 1)
    assert (await tenants.lookup("tok")).id == 1
    db.table["tok"]["suspended"] = 1  # suspended elsewhere (another process, the operator)
    clock.now += 1.9
    assert not (await tenants.lookup("tok")).suspended  # still cached
    clock.now += 0.2
    assert (await tenants.lookup("tok")).suspended  # the bound passed: asked again
    assert db.queries == 2


async def test_unknown_tokens_are_cached_as_unknown(directory):
    tenants, db, clock = directory
    for _ in range(50):
        assert await tenants.lookup("nobody") is None
    assert db.queries == 1
    db.add("nobody", 4)
    clock.now += 30.0  # unknown tokens are remembered for TENANT_NEGATIVE_CACHE_SECONDS (30 s by default)
    assert (await tenants.lookup("nobody")).id == 4


async def test_the_cache_is_bounded_least_recently_used_first(directory):
    tenants, db, _ = directory
    for i in range(4):
        db.add(f"t{i}", i)
    for token in ("t0", "t1", "t2", "t0", "t3"):  # t1 is the least recently used when t3 arrives
        await tenants.lookup(token)
    assert len(tenants) == 3
    queries = db.queries
    await tenants.lookup("t0")
    assert db.queries == queries
    await tenants.lookup("t1")
    assert db.queries == queries + 1


async def test_concurrent_misses_share_one_query(directory):
    tenants, db, _ = directory
    db.add("tok", 1)
    db.gate = asyncio.Event()
    lookups = [asyncio.ensure_future(tenants.lookup("tok")) for _ in range(20)]
    await asyncio.sleep(0)
    db.gate.set()
    assert {a.id for a in await asyncio.gather(*lookups)} == {1}
    assert db.queries == 1


async def test_a_fresh_lookup_and_an_invalidation_ask_mysql_again(directory):
    tenants, db, _ = directory
    db.add("tok", 1)
    await tenants.lookup("tok")
    await tenants.lookup("tok", fresh=True)
    tenants.invalidate("tok")
    await tenants.lookup("tok")
    assert db.queries == 3


async def test_the_last_known_entry_is_served_while_mysql_is_down(directory):
    tenants, db, clock = directory
    db.add("tok", 1)
    await tenants.lookup("tok")
    db.down = True
    clock.now += 5
    assert (await tenants.lookup("tok")).id == 1
    queries = db.queries
    assert (await tenants.lookup("tok")).id == 1  # not asked again at once: one retry per half second
    assert db.queries == queries
    clock.now += 0.6
    await tenants.lookup("tok")
    assert db.queries == queries + 1
    with pytest.raises(DatabaseUnavailable):
        await tenants.lookup("never-seen")


async def test_an_entry_counts_its_age_from_before_its_query(directory):
    tenants, db, clock = directory
    db.add("tok", 1)
    db.gate = asyncio.Event()
    pending = asyncio.ensure_future(tenants.lookup("tok"))
    await asyncio.sleep(0)
    clock.now += 1.5  # the query takes 1.5 s
    db.gate.set()
    await pending
    db.gate = None
    clock.now += 0.6
    await tenants.lookup("tok")
    assert db.queries == 2  # 2.1 s after the query started: too old


def test_a_previous_token_is_valid_only_until_its_expiry():
    from chat_common.tenancy.applications import Application

    app = Application("new", "n", 0, 1, previous_token="old", previous_token_expires_at=time.time() + 10)
    assert app.previous_token_valid(time.time())
    assert not app.previous_token_valid(time.time() + 11)


# -- the admin endpoints over HTTP (Falcon's test client over the fakes) --------------------------------------------
def test_tenant_endpoints_need_the_admin_key_when_one_is_configured():
    from falcon import testing

    from chat_api.app import create_app
    from chat_common.config import Settings

    service, world = build()
    app = create_app(service, Settings(admin_api_key="secret-key"), {}, lifecycle=None)
    client = testing.TestClient(app)
    token = world.application().token
    admin = {"Authorization": "Bearer secret-key"}
    calls = [
        ("POST", "suspend"),
        ("POST", "resume"),
        ("POST", "rotate-token"),
        ("GET", "limits"),
        ("PUT", "limits"),
        ("PATCH", "limits"),
        ("GET", "usage"),
    ]
    for method, path in calls:
        refused = client.simulate_request(method, f"/applications/{token}/{path}", json={})
        assert refused.status_code == 401, (method, path)
    assert not world.applications.find(token).suspended
    assert client.simulate_post(f"/applications/{token}/suspend", headers=admin).json["state"] == "suspended"
    assert client.simulate_get(f"/applications/{token}/usage", headers=admin).json["state"] == "suspended"
    refused = client.simulate_get(f"/applications/{token}/chats")
    assert (refused.status_code, refused.json) == (403, {"error": "application suspended"})
    resumed = client.simulate_post(f"/applications/{token}/resume", headers=admin)
    assert resumed.json["state"] == "active"
    rotated = client.simulate_post(f"/applications/{token}/rotate-token", headers=admin, json={"grace_seconds": 5})
    assert rotated.json["previous_token"] == token and rotated.json["token"] != token
    limits = client.simulate_put(f"/applications/{token}/limits", headers=admin, json={"max_chats": 1})
    assert limits.json["limits"]["max_chats"] == 1
    empty = client.simulate_put(f"/applications/{token}/limits", headers=admin)
    assert (empty.status_code, empty.json) == (422, {"error": "send the limits in the body"})


# -- open streams (chat_api.streams.hub re-checks their tokens) ---------------------------------------------------
async def test_token_standing_applies_the_tenant_rules_without_counting_a_request():
    service, world = build(Limits(rate_limit_per_second=1))
    app = world.application()
    assert await service.token_standing(app.token) is None
    await service.suspend_application(app.token, True)
    assert await service.token_standing(app.token) == ("suspended", "application suspended")
    await service.suspend_application(app.token, False)
    rotated = await service.rotate_token(app.token, 0)
    assert (await service.token_standing(app.token))[1] == "application not found"  # the same 404 as requests
    assert await service.token_standing(rotated.token) is None
    assert await service.token_standing("nobody") == ("unknown", "application not found")
    assert world.rate_limiter.calls == []  # a stream's re-check is not a request: no rate budget spent
    await service.list_chats(rotated.token)  # so the budget of this second is still whole


async def test_token_standing_keeps_streams_when_the_directory_cannot_answer(directory):
    tenants, db, _ = directory
    service, _ = build()
    service.gate.tenants = tenants
    db.down = True  # nothing cached, MySQL away: not a refusal (the next round asks again)
    assert await service.token_standing("tok") is None
