"""Token rotation against the real system: creates racing the rotation with the old and the new token number into
one gap-free, duplicate-free sequence; everything stays with the application; the old token answers 404 once its
grace period (plus the directory's bound) is over, while search still finds the old messages with the new one.

A system of its own with two API workers, so the requests with each token are served by both processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests

from chat_devtools.http import Api, wait_for
from chat_devtools.processes import System
from tests.conftest import own_system
from tests.integration.conftest import Database

GRACE = 6  # seconds the old token keeps working
BOUND = 2.0  # TENANT_CACHE_SECONDS
THREADS = 8
PER_THREAD = 80


@pytest.fixture(scope="module")
def rotating() -> Iterator[tuple[System, Database]]:
    with own_system("rotate", api_workers=2, extra_env={"TENANT_CACHE_SECONDS": str(BOUND)}) as system:
        db = Database(system.namespace.settings.database_url)
        yield system, db
        db.engine.dispose()


def test_creates_with_both_tokens_across_a_rotation_number_one_sequence(rotating):
    system, db = rotating
    api = Api(system.base_url)
    old = api.new_application("rotating")
    chat = api.new_chat(old, "room")
    api.new_message(old, chat, "before the rotation: needle")
    tokens = {"old": old, "new": None}
    numbers: list[int] = []
    chats: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    rotated = threading.Event()
    underway = threading.Event()
    used = {"old after rotation": 0, "new": 0}

    def client(index: int) -> None:
        session = requests.Session()  # keep-alive: the clients' connections spread over both workers
        for i in range(PER_THREAD):
            # Half the clients switch to the new token once it exists, the others keep the old one.
            token = tokens["new"] if rotated.is_set() and index % 2 and tokens["new"] else tokens["old"]
            if i % 10 == 0:
                resp = session.post(f"{system.base_url}/applications/{token}/chats", json={"name": f"c{index}"})
                key, into = "chat_number", chats
            else:
                url = f"{system.base_url}/applications/{token}/chats/{chat}/messages"
                resp = session.post(url, json={"body": f"from {index}:{i}"})
                key, into = "message_number", numbers
            with lock:
                if resp.status_code == 201:
                    into.append(resp.json()[key])
                else:
                    failures.append(f"{resp.status_code} {resp.text}")
                if token == tokens["new"]:
                    used["new"] += 1
                elif rotated.is_set():
                    used["old after rotation"] += 1
                if len(numbers) >= 60:
                    underway.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    assert underway.wait(30)  # rotate in the middle of the stream
    answer = api.post(f"/applications/{old}/rotate-token", json={"grace_seconds": GRACE})
    assert answer.status_code == 200, answer.text
    answered = time.monotonic()  # the grace period started before this
    tokens["new"] = answer.json()["token"]
    assert answer.json()["previous_token"] == old
    rotated.set()
    for thread in threads:
        thread.join()

    assert failures == []
    assert used["new"] > 20 and used["old after rotation"] > 20, used  # both tokens raced after the switch
    # One sequence per counter, whatever token each create used: no gap, no duplicate.
    assert sorted(numbers) == list(range(2, 2 + len(numbers)))
    assert sorted(chats) == list(range(2, 2 + len(chats)))
    new = tokens["new"]
    total = 1 + len(numbers)
    wait_for(
        lambda: (
            db.scalar("SELECT COUNT(*) FROM messages m JOIN chats c ON c.id = m.chat_id WHERE c.number = :n", n=chat)
            == total
        ),
        30,
        0.2,
        "every message written",
    )
    stored = [r[0] for r in db.messages_of(new, chat)]
    assert stored == list(range(1, total + 1))  # exactly once each, under the application's (new) token

    # During the grace period both tokens read the same data; counters and search stay with the application.
    assert api.get(f"/applications/{old}/chats/{chat}").json()["name"] == "room"
    assert api.get(f"/applications/{new}").json()["token"] == new
    # The old token names the same application, but never shows the new token (its holder may be the leaker).
    assert api.get(f"/applications/{old}").json()["token"] == old
    hits = api.get(f"/applications/{new}/chats/{chat}/messages/search", params={"query": "needle"}).json()
    assert [h["message_number"] for h in hits] == [1]

    # After the grace period (and the directory's bound), the old token is unknown everywhere.
    time.sleep(max(0.0, answered + GRACE + BOUND + 0.5 - time.monotonic()))
    for path in ("", "/chats", f"/chats/{chat}", f"/chats/{chat}/messages", f"/chats/{chat}/messages/1"):
        for _ in range(4):  # both workers
            resp = api.get(f"/applications/{old}{path}")
            assert resp.status_code == 404 and resp.json() == {"error": "application not found"}, path
    assert api.post(f"/applications/{old}/chats", json={"name": "late"}).status_code == 404
    assert api.post(f"/applications/{old}/suspend").status_code == 404  # admin endpoints do not know it either
    hits = api.get(f"/applications/{new}/chats/{chat}/messages/search", params={"query": "needle"}).json()
    assert [h["message_number"] for h in hits] == [1]
    assert api.post(f"/applications/{new}/chats", json={"name": "next"}).json() == {"chat_number": 2 + len(chats)}


def test_an_idempotent_retry_with_the_new_token_replays_a_create_made_with_the_old_one(rotating):
    system, _ = rotating
    api = Api(system.base_url)
    old = api.new_application("retrying")
    first = api.post(f"/applications/{old}/chats", json={"name": "once"}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201
    new = api.post(f"/applications/{old}/rotate-token", json={"grace_seconds": 60}).json()["token"]
    retry = api.post(f"/applications/{new}/chats", json={"name": "once"}, headers={"Idempotency-Key": "k1"})
    assert retry.status_code == 201 and retry.json() == first.json()
    assert retry.headers.get("Idempotent-Replayed") == "true"


def test_bad_rotation_requests_are_clear_4xx(rotating):
    system, _ = rotating
    api = Api(system.base_url)
    token = api.new_application("bad rotations")
    for body in ({"grace_seconds": -1}, {"grace_seconds": "soon"}, {"grace_seconds": 10**8}):
        resp = api.post(f"/applications/{token}/rotate-token", json=body)
        assert resp.status_code == 422 and "grace_seconds" in resp.json()["error"], body
    assert api.post(f"/applications/{token}/rotate-token", json=[1]).status_code == 400
    assert api.post("/applications/unknown-token/rotate-token").status_code == 404
    assert api.get(f"/applications/{token}").status_code == 200  # nothing rotated
