"""Creates of chats and messages on fakes: numbering, the hand-off, idempotency keys, and every failure path."""

from __future__ import annotations

import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from chat_api.adapters import numbering as codes
from chat_api.adapters.idempotency import PENDING, Recorded
from chat_api.adapters.numbering import Allocation
from chat_api.metrics_buffer import BUFFER
from chat_api.model import Conflict, DatabaseUnavailable, Invalid, NotFound, NumberingStillOpening, Unavailable
from chat_api.numbering.epochs import FRESH, RECOVERED
from chat_common import metrics
from chat_common.wire.idempotency import KEY_LIFETIME_SECONDS, fingerprint

DB_DOWN = DatabaseUnavailable("gone away")


def counted(counter, queue: str) -> float:
    """What the metrics buffer holds for ``counter{queue}`` (not yet flushed)."""
    return BUFFER._counts.get((counter, (queue,)), 0)


# -- create once ----------------------------------------------------------------------------------------------
async def test_chat_numbers_increase_from_one(service, world):
    app = world.application()
    numbers = [await service.create_chat(app.token, f"room {i}") for i in range(3)]
    assert numbers == [(1, False), (2, False), (3, False)]


async def test_first_create_loads_the_application_counters_from_mysql(service, world):
    app = world.application()
    world.repository.add_chat(app.id, 7, "written before Redis lost its data")
    assert await service.create_chat(app.token, "next") == (8, False)
    assert world.numbering.called("load_application") == [(app.id, world.numbering.epoch, 7)]


async def test_chat_create_publishes_the_row_contract_once(service, world):
    app = world.application()
    await service.create_chat(app.token, "  spaced name  ")
    assert world.payloads() == [
        {"v": 1, "application_id": app.id, "chat_number": 1, "name": "  spaced name  ", "version": 0}
    ]
    assert world.publisher.published[0][0] == world.topology.chats.name


async def test_message_numbers_are_per_chat(service, world):
    app = world.application()
    await service.create_chat(app.token, "a")
    await service.create_chat(app.token, "b")
    got = [
        await service.create_message(app.token, 1, "x"),
        await service.create_message(app.token, 1, "y"),
        await service.create_message(app.token, 2, "z"),
    ]
    assert got == [(1, False), (2, False), (1, False)]
    assert world.payloads("messages")[-1] == {
        "v": 1,
        "application_id": app.id,
        "chat_number": 2,
        "message_number": 1,
        "body": "z",
        "version": 0,
    }


async def test_chat_not_loaded_loads_its_last_message_number(service, world):
    app = world.application()
    world.repository.add_chat(app.id, 2, "old")
    for m in (1, 2, 3):
        world.repository.add_message(app.id, 2, m, "old")
    assert await service.create_message(app.token, 2, "new") == (4, False)
    assert world.numbering.called("load_chat") == [(app.id, world.numbering.epoch, 2, 3)]


async def test_keyed_create_carries_key_and_fingerprint(service, world):
    app = world.application()
    await service.create_message(app.token, (await service.create_chat(app.token, "c"))[0], "hello", "key-1")
    payload = world.payloads("messages")[0]
    assert payload["idempotency_key"] == "key-1"
    assert payload["fingerprint"] == fingerprint("hello")


async def test_invalid_text_is_refused_before_numbering(service, world):
    app = world.application()
    with pytest.raises(Invalid, match="name must not be blank"):
        await service.create_chat(app.token, "   ")
    with pytest.raises(Invalid, match="body must be at most"):
        await service.create_message(app.token, 1, "x" * 10_001)
    assert world.numbering.calls == [] and world.publisher.published == []


async def test_message_body_keeps_tabs_and_line_breaks(service, world):
    app = world.application()
    await service.create_chat(app.token, "c")
    await service.create_message(app.token, 1, "a\tb\r\nc")
    assert world.payloads("messages")[0]["body"] == "a\tb\r\nc"


# -- allocation statuses ----------------------------------------------------------------------------------------
async def test_unknown_application(service, world):
    with pytest.raises(NotFound, match="application not found"):
        await service.create_chat("no-such-token", "x")
    assert world.publisher.published == []


async def test_unknown_chat(service, world):
    app = world.application()
    with pytest.raises(NotFound, match="chat not found"):
        await service.create_message(app.token, 3, "x")


async def test_not_found_without_a_chat_names_the_application(service, world, monkeypatch):
    async def not_found(application_id, max_chats=0):
        return Allocation(codes.NOT_FOUND, world.numbering.epoch)

    monkeypatch.setattr(world.numbering, "new_chat", not_found)
    with pytest.raises(NotFound, match="application not found"):
        await service.create_chat(world.application().token, "x")


async def test_recovering_while_recovery_is_closed_answers_503_retry_1(built):
    service, world = built
    world.recovery.opens_after = None
    app = world.application()
    world.numbering.lose_data()
    with pytest.raises(Unavailable, match="recovering") as caught:
        await service.create_chat(app.token, "x")
    assert caught.value.retry_after == 1
    assert world.recovery.attempts == 1 and world.publisher.published == []


async def test_a_slot_still_opening_for_its_first_use_answers_503_saying_so_not_recovering(built):
    service, world = built
    app = world.application()
    world.numbering.lose_data()  # no epoch: as in a slot that never opened
    world.recovery.fail("attempt", NumberingStillOpening("slot 1 still opening after 5.0 s"))
    with pytest.raises(Unavailable) as caught:
        await service.create_chat(app.token, "x")
    assert str(caught.value) == "numbering of this application is still opening for its first use"
    assert caught.value.retry_after == 1 and world.publisher.published == []
    assert await service.create_chat(app.token, "x") == (1, False)  # the next request finds it open


async def test_recovering_then_open_allocates_after_the_rows_in_mysql(service, world):
    app = world.application()
    await service.create_chat(app.token, "one")
    world.deliver()
    world.numbering.lose_data()
    assert await service.create_chat(app.token, "two") == (2, False)
    assert world.recovery.attempts == 1
    assert world.numbering.epoch.split(":")[1] == RECOVERED


async def test_recovery_opening_on_a_later_attempt(built):
    service, world = built
    world.recovery.opens_after = 2
    app = world.application()
    world.numbering.lose_data()
    with pytest.raises(Unavailable):
        await service.create_chat(app.token, "x")
    assert await service.create_chat(app.token, "x") == (1, False)


async def test_numbering_busy_after_five_rounds(service, world, monkeypatch):
    async def refused(*args):
        return False  # the epoch changed meanwhile, every time

    monkeypatch.setattr(world.numbering, "load_application", refused)
    with pytest.raises(Unavailable, match="busy") as caught:
        await service.create_chat(world.application().token, "x")
    assert caught.value.retry_after == 1
    assert len(world.numbering.called("new_chat")) == 5


@pytest.mark.parametrize("error", [RedisConnectionError("down"), TimeoutError()])
async def test_numbering_store_down_is_503(service, world, error):
    world.numbering.fail("new_chat", error)
    with pytest.raises(Unavailable, match="numbering store unavailable"):
        await service.create_chat(world.application().token, "x")


async def test_database_down_while_loading_counters_is_503(service, world):
    world.repository.fail("last_chat_number", DB_DOWN)
    with pytest.raises(Unavailable, match="database unavailable"):
        await service.create_chat(world.application().token, "x")


# -- the hand-off -----------------------------------------------------------------------------------------------
async def test_publish_failure_is_503_and_counted(service, world):
    app = world.application()
    queue = world.topology.chats.name
    failures, published = counted(metrics.API_PUBLISH_FAILURES, queue), counted(metrics.API_PUBLISHED, queue)
    world.publisher.fail_next()
    with pytest.raises(Unavailable, match="broker") as caught:
        await service.create_chat(app.token, "x")
    assert caught.value.retry_after == 1
    assert counted(metrics.API_PUBLISH_FAILURES, queue) == failures + 1
    assert counted(metrics.API_PUBLISHED, queue) == published
    # the number given to the failed create is never reused: gaps, never duplicates
    assert await service.create_chat(app.token, "y") == (2, False)
    assert counted(metrics.API_PUBLISHED, queue) == published + 1


async def test_publish_failure_with_a_key_is_replayed_by_the_retry(service, world):
    app = world.application()
    world.publisher.fail_next()
    with pytest.raises(Unavailable):
        await service.create_chat(app.token, "x", "retry-me")
    assert await service.create_chat(app.token, "x", "retry-me") == (1, True)
    assert world.payloads("chats")[0]["chat_number"] == 1


# -- idempotent replay ------------------------------------------------------------------------------------------
async def test_same_key_same_text_answers_the_same_number(service, world):
    app = world.application()
    first = await service.create_chat(app.token, "room", "k")
    calls = len(world.numbering.calls)
    again = await service.create_chat(app.token, "room", "k")
    assert (first, again) == ((1, False), (1, True))
    assert len(world.numbering.calls) == calls  # no second number
    assert [p["chat_number"] for p in world.payloads("chats")] == [1, 1]  # re-published: the writer ignores it


async def test_same_key_other_text_is_a_conflict_without_retry_after(service, world):
    app = world.application()
    await service.create_chat(app.token, "room", "k")
    with pytest.raises(Conflict, match="different request") as caught:
        await service.create_chat(app.token, "other room", "k")
    assert caught.value.retry_after is None
    assert len(world.payloads("chats")) == 1


async def test_key_in_use_is_a_conflict_with_retry_after(service, world):
    app = world.application()
    world.idempotency.values[(app.id, "chats", "k")] = PENDING
    with pytest.raises(Conflict, match="in progress") as caught:
        await service.create_chat(app.token, "room", "k")
    assert caught.value.retry_after == world.idempotency.claim_seconds
    assert world.numbering.calls == []


async def test_keys_are_scoped_per_chat_and_kind(service, world):
    app = world.application()
    assert await service.create_chat(app.token, "a", "k") == (1, False)
    assert await service.create_chat(app.token, "b", "other") == (2, False)
    assert await service.create_message(app.token, 1, "m", "k") == (1, False)
    assert await service.create_message(app.token, 2, "m", "k") == (1, False)
    assert await service.create_message(app.token, 1, "m", "k") == (1, True)
    assert set(world.idempotency.values) == {
        (app.id, "chats", "k"),
        (app.id, "chats", "other"),
        (app.id, "chats/1/messages", "k"),
        (app.id, "chats/2/messages", "k"),
    }


@pytest.mark.parametrize("key", ["", "has space", "x" * 129, "é"])
async def test_malformed_key_is_invalid(service, world, key):
    with pytest.raises(Invalid, match="Idempotency-Key"):
        await service.create_chat(world.application().token, "x", key)
    assert world.idempotency.calls == []


async def test_fresh_epoch_never_looks_keys_up_in_mysql(service, world):
    app = world.application()
    world.stored_keys.rows[(app.id, 0, "k")] = Recorded(app.id, 9, fingerprint("room"))
    assert world.numbering.epoch.split(":")[1] == FRESH
    assert await service.create_chat(app.token, "room", "k") == (1, False)
    assert world.stored_keys.calls == []


async def test_recovered_epoch_finds_the_key_in_mysql_and_records_it_again(service, world):
    app = world.application()
    world.numbering.open(RECOVERED)
    world.stored_keys.rows[(app.id, 0, "k")] = Recorded(app.id, 9, fingerprint("room"))
    assert await service.create_chat(app.token, "room", "k") == (9, True)
    assert world.idempotency.values[(app.id, "chats", "k")] == Recorded(app.id, 9, fingerprint("room"))
    assert world.numbering.calls == []  # no new number
    assert world.payloads("chats")[0]["chat_number"] == 9
    # the next retry is answered from Redis again
    assert await service.create_chat(app.token, "room", "k") == (9, True)
    assert len(world.stored_keys.calls) == 1


async def test_recovered_epoch_key_unknown_to_mysql_gets_a_new_number(service, world):
    app = world.application()
    world.numbering.open(RECOVERED)
    assert await service.create_chat(app.token, "room", "k") == (1, False)
    assert world.stored_keys.called("find") == [(app.id, 0, "k")]


async def test_recovery_older_than_a_key_lifetime_needs_no_lookup(service, world):
    app = world.application()
    world.numbering.open(RECOVERED, at=time.time() - KEY_LIFETIME_SECONDS - 60)
    await service.create_chat(app.token, "room", "k")
    assert world.stored_keys.calls == []


async def test_key_stored_for_other_text_is_a_conflict(service, world):
    app = world.application()
    world.numbering.open(RECOVERED)
    world.stored_keys.rows[(app.id, 1, "k")] = Recorded(app.id, 4, fingerprint("first text"))
    world.repository.add_chat(app.id, 1, "c")
    with pytest.raises(Conflict, match="different request"):
        await service.create_message(app.token, 1, "second text", "k")


async def test_key_while_numbering_is_closed_is_looked_up_then_released(built):
    service, world = built
    world.recovery.opens_after = None
    app = world.application()
    world.numbering.lose_data()
    with pytest.raises(Unavailable, match="recovering"):
        await service.create_chat(app.token, "room", "k")
    assert world.stored_keys.called("find") == [(app.id, 0, "k")]  # closed ('') may have forgotten keys
    assert (app.id, "chats", "k") not in world.idempotency.values  # freed for the retry


# -- Redis and MySQL failures around keys -----------------------------------------------------------------------
async def test_redis_down_at_claim_is_503(service, world):
    world.idempotency.fail("claim", RedisConnectionError("down"))
    with pytest.raises(Unavailable, match="numbering store unavailable"):
        await service.create_chat(world.application().token, "x", "k")


@pytest.mark.parametrize(
    ("port", "step", "next_number"),
    [
        ("numbering", "new_chat", 1),  # no number was handed out
        ("idempotency", "record", 2),  # number 1 was taken, then lost with the failed record
    ],
)
async def test_redis_down_after_the_key_is_claimed_is_503_and_frees_the_key(service, world, port, step, next_number):
    app = world.application()
    getattr(world, port).fail(step, RedisConnectionError("down"))
    with pytest.raises(Unavailable, match="numbering store unavailable"):
        await service.create_chat(app.token, "x", "k")
    assert world.idempotency.called("release") == [(app.id, "chats", "k")]
    assert (app.id, "chats", "k") not in world.idempotency.values
    assert world.publisher.published == []
    assert await service.create_chat(app.token, "x", "k") == (next_number, False)  # the key is free


async def test_release_failing_never_replaces_the_original_error(service, world):
    world.idempotency.fail("release", RedisConnectionError("down too"))
    with pytest.raises(NotFound, match="application not found"):
        await service.create_chat("unknown-token", "x", "k")
    world.idempotency.fail("release", RedisConnectionError("down too"))
    world.repository.fail("last_chat_number", DB_DOWN)
    with pytest.raises(Unavailable, match="database unavailable"):
        await service.create_chat(world.application().token, "x", "k2")


async def test_mysql_down_at_key_lookup_is_503_and_frees_the_key(service, world):
    app = world.application()
    world.numbering.open(RECOVERED)
    world.stored_keys.fail("find", DB_DOWN)
    with pytest.raises(Unavailable, match="database unavailable"):
        await service.create_chat(app.token, "x", "k")
    assert (app.id, "chats", "k") not in world.idempotency.values


async def test_a_replayed_key_is_never_released(service, world):
    app = world.application()
    await service.create_chat(app.token, "x", "k")
    world.publisher.fail_next()
    with pytest.raises(Unavailable):
        await service.create_chat(app.token, "x", "k")
    assert world.idempotency.called("release") == []
    assert world.idempotency.values[(app.id, "chats", "k")].number == 1


async def test_each_publish_carries_the_stamp_taken_before_its_number_was_handed_out(service, world):
    app = world.application()
    before = time.time()
    await service.create_chat(app.token, "general")
    await service.create_message(app.token, 1, "hello", idempotency_key="k-1")
    await service.create_message(app.token, 1, "hello", idempotency_key="k-1")  # a replay: stamped at its claim
    after = time.time()
    assert len(world.publisher.stamps) == 3
    assert all(stamp is not None and before <= stamp <= after for stamp in world.publisher.stamps)
    assert world.publisher.stamps[1] <= world.publisher.stamps[2]
