"""Per-tenant limits against the real system: each refuses exactly at its limit, another tenant is unaffected.

A system of its own with two API workers and ``RATE_LIMIT_PER_SECOND`` unset (no default limit), so whatever is
refused is the tenant's own limit. Limits are set through the admin API and are in force on every process within
the tenant directory's bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from tests.conftest import LOG_ROOT

BOUND = 1.0  # TENANT_CACHE_SECONDS of this system


@pytest.fixture(scope="module")
def limited() -> Iterator[System]:
    ns = Namespace.create("limits")
    system = System(ns, LOG_ROOT / ns.name, api_workers=2, extra_env={"TENANT_CACHE_SECONDS": str(BOUND)}).start()
    yield system
    system.stop()
    ns.destroy()


def set_limits(api: Api, token: str, **limits: int | None) -> dict:
    resp = api.patch(f"/applications/{token}/limits", json=limits)
    assert resp.status_code == 200, resp.text
    time.sleep(BOUND + 0.1)  # every worker's directory has it
    return resp.json()


def at_second_start() -> None:
    time.sleep(1 - time.time() % 1 + 0.02)


def test_requests_per_second_exactly_at_the_limit_per_tenant(limited):
    api = Api(limited.base_url)
    busy, quiet = api.new_application("busy"), api.new_application("quiet")
    assert set_limits(api, busy, requests_per_second=5)["limits"]["requests_per_second"] == 5
    sessions = [requests.Session() for _ in range(4)]  # several connections: both workers count into one window
    at_second_start()
    started = time.time()
    burst = [sessions[i % 4].get(f"{limited.base_url}/applications/{busy}/chats") for i in range(12)]
    others = [sessions[i % 4].get(f"{limited.base_url}/applications/{quiet}/chats").status_code for i in range(12)]
    if int(time.time()) != int(started):
        pytest.skip("the burst straddled two one-second windows on this loaded machine; nothing to conclude")
    statuses = [r.status_code for r in burst]
    assert statuses.count(200) == 5 and statuses.count(429) == 7, statuses
    refused = next(r for r in burst if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert refused.json() == {"error": "more than 5 requests per second for this application"}
    assert others == [200] * 12  # the other tenant has no limit
    at_second_start()
    assert api.get(f"/applications/{busy}/chats").status_code == 200  # a new second, a new budget
    assert api.get(f"/applications/{busy}/limits").status_code == 200  # admin endpoints are not counted
    set_limits(api, busy, requests_per_second=None)
    at_second_start()
    assert {api.get(f"/applications/{busy}/chats").status_code for _ in range(12)} == {200}


def test_max_chats_refuses_exactly_at_the_limit_without_using_up_a_number(limited):
    api = Api(limited.base_url)
    capped, free = api.new_application("capped"), api.new_application("free")
    set_limits(api, capped, max_chats=3)
    assert [api.new_chat(capped, f"c{i}") for i in range(3)] == [1, 2, 3]
    refused = api.post(f"/applications/{capped}/chats", json={"name": "fourth"})
    assert refused.status_code == 409  # a state conflict, not an invalid body
    assert refused.json() == {"error": "this application has reached its limit of 3 chats"}
    keyed = api.post(f"/applications/{capped}/chats", json={"name": "x"}, headers={"Idempotency-Key": "k"})
    assert keyed.status_code == 409  # with an idempotency key too, and the key is free again afterwards
    assert [api.new_chat(free, f"c{i}") for i in range(5)] == [1, 2, 3, 4, 5]
    set_limits(api, capped, max_chats=4)
    assert api.post(f"/applications/{capped}/chats", json={"name": "x"}, headers={"Idempotency-Key": "k"}).json() == {
        "chat_number": 4
    }  # no gap: the refused creates took no number


def test_max_message_bytes_exactly_at_the_limit_on_create_and_edit(limited):
    api = Api(limited.base_url)
    small, other = api.new_application("small"), api.new_application("other")
    set_limits(api, small, max_message_bytes=10)
    chat = api.new_chat(small)
    at_limit = "é" * 5  # 10 bytes in UTF-8 (5 characters)
    assert api.post(f"/applications/{small}/chats/{chat}/messages", json={"body": at_limit}).status_code == 201
    over = api.post(f"/applications/{small}/chats/{chat}/messages", json={"body": at_limit + "a"})
    assert over.status_code == 422
    assert over.json() == {"error": "body is larger than this application's limit of 10 bytes (UTF-8)"}
    api.wait_message(small, chat, 1)
    edit = api.patch(f"/applications/{small}/chats/{chat}/messages/1", json={"body": "x" * 11})
    assert edit.status_code == 422
    assert api.get(f"/applications/{small}/chats/{chat}/messages/1").json()["body"] == at_limit
    other_chat = api.new_chat(other)
    assert api.new_message(other, other_chat, "x" * 1000) == 1  # unaffected


def test_limits_are_validated(limited):
    api = Api(limited.base_url)
    token = api.new_application("validated")
    for body in ({"max_chats": 0}, {"max_chats": "many"}, {"requests_per_second": 2**32}, {"burst": 4}):
        resp = api.put(f"/applications/{token}/limits", json=body)
        assert resp.status_code == 422 and resp.json()["error"], body
    assert api.put(f"/applications/{token}/limits", json=[1]).status_code == 400
    put = api.put(f"/applications/{token}/limits", json={"max_chats": 9})
    assert put.json()["limits"] == {"requests_per_second": None, "max_chats": 9, "max_message_bytes": None}
    assert api.get(f"/applications/{token}/limits").json()["max_chats"] == 9
