"""Stream tickets and CORS over HTTP: a backend mints a ticket with its token, a client opens ``/streams/{ticket}``
with the ticket alone; forged, expired, rotated-away and suspended tickets are refused; only the stream and ticket
routes answer CORS, for the allowed origin only, never with credentials."""

from __future__ import annotations

import os
import time

import pytest

from chat_api.use_cases.tickets import TicketSigner, parse_keys
from chat_common.tenancy.tokens import token_digest
from chat_devtools.namespace import TEST_ORIGIN
from chat_devtools.sse import Listener


def mint(api, token: str, chat: int) -> dict:
    resp = api.post(f"/applications/{token}/chats/{chat}/stream-tickets")
    if resp.status_code == 503 and "not configured" in resp.json()["error"]:
        pytest.skip("the API under test has no STREAM_TICKET_KEYS")
    assert resp.status_code == 201, resp.text
    assert resp.headers["cache-control"] == "no-store"
    return resp.json()


def written_chat_with(api, token: str, bodies: list[str]) -> tuple[int, list[int]]:
    chat = api.new_chat(token)
    api.wait_chat(token, chat)
    numbers = [api.new_message(token, chat, body) for body in bodies]
    if numbers:
        api.wait_message(token, chat, numbers[-1])
    return chat, numbers


def test_a_ticket_opens_its_chats_stream_without_the_token(api, token):
    chat, numbers = written_chat_with(api, token, ["one", "two"])
    minted = mint(api, token, chat)
    assert set(minted) == {"ticket", "chat_number", "expires_at", "stream_path"}
    assert minted["chat_number"] == chat and minted["expires_at"] > time.time() + 200
    assert token not in minted["ticket"] and minted["stream_path"] == f"/streams/{minted['ticket']}"
    with Listener(f"{api.base_url}{minted['stream_path']}?after=0").start() as listener:
        assert listener.status == 200 and listener.headers["content-type"].startswith("text/event-stream")
        assert listener.headers["last-event-id"] == "0"  # where it resumed
        third = api.new_message(token, chat, "three")
        listener.wait_numbers([*numbers, third])
        assert [e.data["body"] for e in listener.events] == ["one", "two", "three"]
    # A reconnect as an EventSource makes it: Last-Event-ID, nothing again, nothing missed.
    with Listener(f"{api.base_url}{minted['stream_path']}", last_event_id=str(numbers[0])).start() as resumed:
        assert resumed.headers["last-event-id"] == str(numbers[0])
        resumed.wait_numbers([numbers[1], third])
    # Without a resume point it starts after the newest stored message, and says so.
    with Listener(f"{api.base_url}{minted['stream_path']}").start() as live:
        assert live.headers["last-event-id"] == str(third)


def test_the_header_form_mints_too_and_a_token_stream_names_where_it_resumed(api, token):
    chat, _ = written_chat_with(api, token, ["one"])
    resp = api.post(f"/application/chats/{chat}/stream-tickets", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 201 and resp.json()["chat_number"] == chat
    assert api.post(f"/application/chats/{chat}/stream-tickets").status_code == 401
    with Listener(f"{api.base_url}/applications/{token}/chats/{chat}/messages/stream?after=0").start() as listener:
        assert listener.headers["last-event-id"] == "0"


def test_minting_follows_the_tenant_rules(api, token):
    chat, _ = written_chat_with(api, token, [])
    assert api.post(f"/applications/{token}/chats/{chat + 1000}/stream-tickets").status_code == 404
    assert api.post(f"/applications/not-a-token-{os.getpid()}/chats/{chat}/stream-tickets").status_code == 404
    assert api.get(f"/applications/{token}/chats/{chat}/stream-tickets").status_code == 405


def test_forged_and_malformed_tickets_are_refused(api, token):
    chat, _ = written_chat_with(api, token, [])
    ticket = mint(api, token, chat)["ticket"]
    prefix, claims, mac = ticket.split(".")
    flipped = mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB")
    for bad in (f"{prefix}.{claims}.{flipped}", f"{prefix}.{claims}x.{mac}", "st1.e30.AAAA", "nonsense", "x" * 600):
        resp = api.get(f"/streams/{bad}")
        assert resp.status_code == 404, bad
        assert resp.json() == {"error": "stream ticket not valid; ask the application's backend for a new one"}


def test_an_expired_ticket_is_refused(api, token, system, in_process_only):
    chat, _ = written_chat_with(api, token, [])
    keys = parse_keys(system.namespace.settings.stream_ticket_keys)
    long_ago = TicketSigner(keys, 300, clock=lambda: time.time() - 301)  # the deployment's key, minted 301 s ago
    expired, _ = long_ago.sign(token_digest(token), chat)
    assert api.get(f"/streams/{expired}").status_code == 404
    fresh, _ = TicketSigner(keys, 300).sign(token_digest(token), chat)
    with Listener(f"{api.base_url}/streams/{fresh}").start() as listener:  # the same ticket minted now opens
        assert listener.status == 200


def test_a_rotation_refuses_earlier_tickets_and_ends_their_streams(api, token):
    chat, _ = written_chat_with(api, token, [])
    ticket = mint(api, token, chat)["ticket"]
    with Listener(f"{api.base_url}/streams/{ticket}").start() as listener:
        rotated = api.post(f"/applications/{token}/rotate-token", json={"grace_seconds": 3600})
        assert rotated.status_code == 200
        new_token = rotated.json()["token"]
        listener.wait_until(lambda listened: listened.done.is_set(), timeout=30, what="the stream's end")
        assert [e.event for e in listener.events][-1:] == ["error"]
    assert api.get(f"/streams/{ticket}").status_code == 404
    assert api.post(f"/applications/{token}/chats/{chat}/stream-tickets").status_code == 404  # former token
    fresh = mint(api, new_token, chat)["ticket"]
    with Listener(f"{api.base_url}/streams/{fresh}").start() as opened:
        assert opened.status == 200


def test_a_suspension_ends_ticket_streams_and_refuses_tickets_until_resumed(api, token):
    chat, _ = written_chat_with(api, token, [])
    ticket = mint(api, token, chat)["ticket"]
    with Listener(f"{api.base_url}/streams/{ticket}").start() as listener:
        assert api.post(f"/applications/{token}/suspend").status_code == 200
        listener.wait_until(lambda listened: listened.done.is_set(), timeout=30, what="the stream's end")
        assert [(e.event, e.data) for e in listener.events][-1:] == [("error", {"error": "application suspended"})]
    time.sleep(2.5)  # TENANT_CACHE_SECONDS: every process sees it
    resp = api.get(f"/streams/{ticket}")
    assert resp.status_code == 403 and resp.json() == {"error": "application suspended"}
    assert api.post(f"/applications/{token}/resume").status_code == 200
    time.sleep(2.5)
    with Listener(f"{api.base_url}/streams/{ticket}").start() as listener:
        assert listener.status == 200


def test_cors_only_on_the_stream_and_ticket_routes_for_the_allowed_origin(api, token, in_process_only):
    chat, _ = written_chat_with(api, token, [])
    ticket_path = f"/applications/{token}/chats/{chat}/stream-tickets"
    allowed = api.post(ticket_path, headers={"Origin": TEST_ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == TEST_ORIGIN
    assert "access-control-allow-credentials" not in allowed.headers and "Origin" in allowed.headers["vary"]
    refused = api.post(ticket_path, headers={"Origin": "http://elsewhere.test"})
    assert refused.status_code == 201 and "access-control-allow-origin" not in refused.headers
    ticket = allowed.json()["ticket"]
    # A page's EventSource: a simple GET, no preflight; its answer is readable by the allowed origin only.
    for path in (f"/streams/{ticket}", f"/applications/{token}/chats/{chat}/messages/stream"):
        with Listener(f"{api.base_url}{path}", request_headers={"Origin": TEST_ORIGIN}).start() as listener:
            assert listener.headers["access-control-allow-origin"] == TEST_ORIGIN
            assert listener.headers["access-control-expose-headers"] == "Last-Event-ID"
    preflight_headers = {"Origin": TEST_ORIGIN, "Access-Control-Request-Method": "POST"}
    preflight = api.request("OPTIONS", f"/application/chats/{chat}/stream-tickets", headers=preflight_headers)
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == TEST_ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    # Every other route opts out: no CORS header, whoever asks.
    other = api.get(f"/applications/{token}/chats/{chat}", headers={"Origin": TEST_ORIGIN})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_a_tenants_own_origins_replace_the_deployments(api, token, in_process_only):
    chat, _ = written_chat_with(api, token, [])
    own = "http://tenant-origin.test"
    assert api.get(f"/applications/{token}/cors-origins").json() == {"origins": None}
    changed = api.put(f"/applications/{token}/cors-origins", json={"origins": [own]})
    assert changed.status_code == 200 and changed.json()["cors_origins"] == [own]
    assert api.get(f"/applications/{token}/cors-origins").json() == {"origins": [own]}
    assert api.put(f"/applications/{token}/cors-origins", json={"origins": ["not an origin"]}).status_code == 422
    time.sleep(2.5)  # TENANT_CACHE_SECONDS: every process sees it

    def allowed(origin: str) -> tuple[str | None, str | None]:
        minted = api.post(f"/applications/{token}/chats/{chat}/stream-tickets", headers={"Origin": origin})
        listener = Listener(f"{api.base_url}{minted.json()['stream_path']}", request_headers={"Origin": origin})
        try:
            listener.start()
            return (
                minted.headers.get("access-control-allow-origin"),
                listener.headers.get("access-control-allow-origin"),
            )
        finally:
            listener.close()

    assert allowed(own) == (own, own)
    assert allowed(TEST_ORIGIN) == (None, None)  # the deployment's list no longer applies to this tenant
    token_stream = f"{api.base_url}/applications/{token}/chats/{chat}/messages/stream"
    for origin, answer in ((own, own), (TEST_ORIGIN, None)):
        with Listener(token_stream, request_headers={"Origin": origin}).start() as listener:
            assert listener.headers.get("access-control-allow-origin") == answer
    assert api.put(f"/applications/{token}/cors-origins", json={"origins": None}).json()["cors_origins"] is None
    time.sleep(2.5)
    assert allowed(TEST_ORIGIN) == (TEST_ORIGIN, TEST_ORIGIN)
