"""Edits, reads, paging, search and the application lifecycle of the service layer, on fakes."""

from __future__ import annotations

import pytest

from chat_api.metrics_buffer import BUFFER
from chat_api.model import (
    Chat,
    Conflict,
    DatabaseUnavailable,
    Invalid,
    Message,
    NotFound,
    RateLimited,
    StatementTimedOut,
    Unavailable,
)
from chat_api.services import Limits
from chat_common import metrics
from tests.unit.fakes import build, chat_with_messages

DB_DOWN = DatabaseUnavailable("gone away")


# -- edits ------------------------------------------------------------------------------------------------------
async def test_rename_applied_answers_the_row_as_stored(service, world):
    app = await chat_with_messages(service, world)
    chat, applied = await service.rename_chat(app.token, 1, "renamed")
    assert (chat, applied) == (Chat(1, "renamed", 0), True)
    assert (await service.get_chat(app.token, 1)).name == "renamed"


async def test_rename_is_published_with_its_version_and_applied_with_the_same(service, world):
    app = await chat_with_messages(service, world)
    await service.rename_chat(app.token, 1, "renamed")
    (payload,) = world.payloads("chats")
    assert payload["version"] > 0 and "idempotency_key" not in payload
    assert world.repository.called("rename_chat") == [(app.id, 1, "renamed", payload["version"])]


async def test_rename_of_a_chat_not_written_yet_is_queued(service, world):
    app = world.application()
    await service.create_chat(app.token, "room")  # published, not delivered
    chat, applied = await service.rename_chat(app.token, 1, "renamed")
    assert (chat, applied) == (Chat(1, "renamed", 0), False)
    world.deliver()  # create, then the edit: the newer version wins
    assert (await service.get_chat(app.token, 1)).name == "renamed"


async def test_rename_with_the_database_down_is_queued_not_failed(service, world):
    app = await chat_with_messages(service, world)
    world.repository.fail("rename_chat", DB_DOWN)
    assert await service.rename_chat(app.token, 1, "renamed") == (Chat(1, "renamed", 0), False)
    assert len(world.payloads("chats")) == 1  # durable before anyone was told


async def test_rename_of_an_unknown_chat(service, world):
    app = await chat_with_messages(service, world)
    with pytest.raises(NotFound, match="chat not found"):
        await service.rename_chat(app.token, 2, "x")
    assert world.publisher.published == []


async def test_rename_validates_the_name_first(service, world):
    app = await chat_with_messages(service, world)
    with pytest.raises(Invalid):
        await service.rename_chat(app.token, 1, "bad\x00name")
    assert world.numbering.called("edit_chat") == []


async def test_rename_publish_failure_touches_no_row(service, world):
    app = await chat_with_messages(service, world)
    world.publisher.fail_next()
    with pytest.raises(Unavailable):
        await service.rename_chat(app.token, 1, "renamed")
    assert world.repository.called("rename_chat") == []


async def test_edit_message_applied(service, world):
    app = await chat_with_messages(service, world, 2)
    message, applied = await service.edit_message(app.token, 1, 2, "edited")
    assert (message, applied) == (Message(2, "edited"), True)
    (payload,) = world.payloads("messages")
    assert world.repository.called("edit_message") == [(app.id, 1, 2, "edited", payload["version"])]


async def test_edit_message_not_written_yet_is_queued(service, world):
    app = await chat_with_messages(service, world)
    await service.create_message(app.token, 1, "first")
    assert await service.edit_message(app.token, 1, 1, "edited") == (Message(1, "edited"), False)


async def test_edit_message_with_the_database_down_is_queued(service, world):
    app = await chat_with_messages(service, world, 1)
    world.repository.fail("edit_message", DB_DOWN)
    assert await service.edit_message(app.token, 1, 1, "edited") == (Message(1, "edited"), False)


async def test_edit_of_a_message_never_numbered(service, world):
    app = await chat_with_messages(service, world, 1)
    with pytest.raises(NotFound):
        await service.edit_message(app.token, 1, 2, "x")


async def test_later_edits_carry_higher_versions(service, world):
    app = await chat_with_messages(service, world, 1)
    await service.edit_message(app.token, 1, 1, "one")
    await service.edit_message(app.token, 1, 1, "two")
    first, second = (p["version"] for p in world.payloads("messages"))
    assert second > first
    assert (await service.get_message(app.token, 1, 1)).body == "two"


# -- reads and paging -------------------------------------------------------------------------------------------
async def test_get_names_what_is_missing(service, world):
    app = await chat_with_messages(service, world, 1)
    with pytest.raises(NotFound, match="application not found"):
        await service.get_chat("nope", 1)
    with pytest.raises(NotFound, match="chat not found"):
        await service.get_message(app.token, 9, 1)
    with pytest.raises(NotFound, match="message not found"):
        await service.get_message(app.token, 1, 9)


async def test_page_uses_the_default_size_and_asks_one_row_more(service, world):
    app = await chat_with_messages(service, world, 25)
    page = await service.list_messages(app.token, 1)
    assert [m.message_number for m in page.items] == list(range(1, 21))
    assert (page.page, page.per_page, page.has_next) == (1, 20, True)
    assert world.repository.called("list_messages")[-1] == (app.id, 1, 0, 0, 21)


async def test_page_number_becomes_an_offset(service, world):
    app = await chat_with_messages(service, world, 25)
    page = await service.list_messages(app.token, 1, page=3, per_page=10)
    assert [m.message_number for m in page.items] == [21, 22, 23, 24, 25]
    assert page.has_next is False
    assert world.repository.called("list_messages")[-1] == (app.id, 1, 0, 20, 11)


async def test_after_seeks_by_number_with_offset_zero(service, world):
    app = await chat_with_messages(service, world, 25)
    page = await service.list_messages(app.token, 1, page=5, per_page=10, after=10)
    assert [m.message_number for m in page.items] == list(range(11, 21))
    assert page.has_next is True and page.page == 5
    assert world.repository.called("list_messages")[-1] == (app.id, 1, 10, 0, 11)


async def test_has_next_is_false_on_an_exact_last_page(service, world):
    app = await chat_with_messages(service, world, 10)
    page = await service.list_messages(app.token, 1, per_page=10)
    assert len(page.items) == 10 and page.has_next is False


async def test_list_chats_pages_and_after(service, world):
    app = world.application()
    for i in range(5):
        await service.create_chat(app.token, f"c{i}")
    world.deliver()
    first = await service.list_chats(app.token, per_page=2)
    rest = await service.list_chats(app.token, per_page=2, after=4)
    assert [c.chat_number for c in first.items] == [1, 2] and first.has_next
    assert [c.chat_number for c in rest.items] == [5] and not rest.has_next


async def test_empty_lists_tell_unknown_from_empty(service, world):
    app = world.application()
    assert (await service.list_chats(app.token)).items == []
    with pytest.raises(NotFound, match="application not found"):
        await service.list_chats("nope")
    with pytest.raises(NotFound, match="chat not found"):
        await service.list_messages(app.token, 1)


def test_page_bounds_only_fills_in_the_configured_default():
    service, _ = build(Limits(default_page_size=7, max_page_size=50))
    assert service.page_bounds(3, None) == (3, 7)
    assert service.page_bounds(1, 50) == (1, 50)


# -- search -----------------------------------------------------------------------------------------------------
async def test_search_finds_fragments_case_insensitively(service, world):
    app = await chat_with_messages(service, world)
    for body in ("Hello World", "nothing", "WORLDWIDE"):
        await service.create_message(app.token, 1, body)
    world.deliver()
    result = await service.search_messages(app.token, 1, "world")
    assert [h.message_number for h in result.items] == [1, 3]
    assert world.search.called("search") == [(app.id, 1, "world", 0, 21)]


async def test_search_pages(service, world):
    app = await chat_with_messages(service, world, 5)
    result = await service.search_messages(app.token, 1, "message", page=2, per_page=2)
    assert [h.message_number for h in result.items] == [3, 4] and result.has_next


async def test_search_of_unknown_application_or_chat(service, world):
    app = await chat_with_messages(service, world)
    with pytest.raises(NotFound, match="application not found"):
        await service.search_messages("nope", 1, "x")
    with pytest.raises(NotFound, match="chat not found"):
        await service.search_messages(app.token, 2, "x")
    assert world.search.calls == []


async def test_search_backend_down_is_503_retry_5(service, world):
    app = await chat_with_messages(service, world)
    world.search.unavailable = True
    with pytest.raises(Unavailable, match="search unavailable") as caught:
        await service.search_messages(app.token, 1, "x")
    assert caught.value.retry_after == 5


async def test_searches_spend_their_applications_search_time_and_stop_when_it_is_used_up(service, world):
    """One tenant's searches cannot keep the database busy: past its share of search time they are 429 (#23)."""
    app = await chat_with_messages(service, world)
    other = await chat_with_messages(service, world)
    await service.search_messages(app.token, 1, "x")
    [(app_id, seconds)] = world.search_budget.called("spend")
    assert app_id == app.id and 0 <= seconds < 1
    # A search the statement time limit stopped took its time too (here: 1 s, the budget's 2 s burst gone at 0.1/s).
    world.search.fail("search", StatementTimedOut(1.0))
    with pytest.raises(StatementTimedOut):
        await service.search_messages(app.token, 1, "x")
    assert len(world.search_budget.called("spend")) == 2
    world.search_budget.tat[app.id] = world.search_budget.now + 20 + 7.5  # 7.5 s of debt past the burst
    with pytest.raises(RateLimited, match="share of search time") as refused:
        await service.search_messages(app.token, 1, "x")
    assert refused.value.retry_after == 8
    assert len(world.search.called("search")) == 2  # refused before the database
    await service.search_messages(other.token, 1, "x")  # another tenant's share is its own
    world.search_budget.now += 8
    await service.search_messages(app.token, 1, "x")


async def test_search_time_is_observed_per_backend(service, world):
    app = await chat_with_messages(service, world)
    key = (metrics.SEARCH_SECONDS, ("fake",))
    before = BUFFER._observed.get(key, [0.0])[:-1]
    await service.search_messages(app.token, 1, "x")
    assert sum(BUFFER._observed[key][:-1]) == sum(before) + 1


# -- applications (synchronous tenancy layer, in a thread) ------------------------------------------------------
async def test_create_application_and_repeat_with_a_key(service, world):
    created, fresh = await service.create_application("Acme", "app-key")
    again, second = await service.create_application("Acme", "app-key")
    assert fresh is True and second is False and again == created
    assert (await service.get_application(created.token)).name == "Acme"


async def test_an_application_key_is_scoped_to_its_caller_and_bound_to_its_request(service, world):
    first, _ = await service.create_application("Acme", "app-key", caller="admin:one")
    # Another caller's key with the same text names nothing of the first caller's: a new application.
    other, created = await service.create_application("Acme", "app-key", caller="admin:two")
    assert created and other.token != first.token
    # The same key with another request (a different name) is a conflict, never the first application.
    with pytest.raises(Conflict, match="different request"):
        await service.create_application("Globex", "app-key", caller="admin:one")
    # The name is compared as validated (the canonical body): the same name replays.
    assert await service.create_application("Acme", "app-key", caller="admin:one") == (first, False)
    # What is stored is opaque and in the API's own key space: never the key, never "k8s:<uid>".
    assert all(key.startswith("api:") and "app-key" not in key for key in world.applications.by_key)


async def test_a_key_from_outside_never_names_the_operators_application(service, world):
    operators, _ = world.applications.create("Acme", "k8s:0f9c-uid")  # as the operator stores it
    created, fresh = await service.create_application("Acme", "k8s:0f9c-uid", caller="open")
    assert fresh and created.token != operators.token


async def test_create_application_validates_the_name(service):
    with pytest.raises(Invalid, match="name is required"):
        await service.create_application(None)


async def test_unknown_application_for_get_rename_delete(service):
    with pytest.raises(NotFound):
        await service.get_application("nope")
    with pytest.raises(NotFound):
        await service.rename_application("nope", "x")
    with pytest.raises(NotFound):
        await service.delete_application("nope")


async def test_rename_application(service, world):
    app = world.application()
    assert (await service.rename_application(app.token, "New")).name == "New"


async def test_delete_application_forgets_its_counters(service, world):
    app = world.application()
    await service.create_chat(app.token, "x")
    assert app.id in world.numbering.hashes
    assert await service.delete_application(app.token) == 0
    assert app.id not in world.numbering.hashes
    with pytest.raises(NotFound):
        await service.create_chat(app.token, "y")


async def test_list_applications_pages(service, world):
    for i in range(3):
        world.application(f"a{i}")
    page = await service.list_applications(page=1, per_page=2)
    assert [a.name for a in page.items] == ["a0", "a1"] and page.has_next
    assert world.applications.called("list") == [(0, 3)]
