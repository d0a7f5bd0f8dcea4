"""Tenant management over HTTP: suspend and resume, token rotation, limits and usage (admin endpoints).

Black box: runs against the local system or ``API_BASE_URL``. The API's tenant directory may serve an entry for
up to ``TENANT_CACHE_SECONDS`` (default 2), so changes are awaited within that bound (plus slack).
"""

from __future__ import annotations

import re

from chat_devtools.http import Api, wait_for

BOUND = 2.0 + 2.0  # the default TENANT_CACHE_SECONDS, plus slack for a loaded machine or an ingress
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def status_within_bound(api: Api, path: str, status: int) -> None:
    wait_for(lambda: api.get(path).status_code == status, BOUND, 0.1, f"{path} answering {status}")


def test_suspend_and_resume(api: Api, token: str):
    chat = api.new_chat(token, "room")
    suspended = api.post(f"/applications/{token}/suspend")
    assert suspended.status_code == 200
    body = suspended.json()
    assert (body["token"], body["state"], body["suspended"]) == (token, "suspended", True)
    status_within_bound(api, f"/applications/{token}/chats", 403)
    refused = api.post(f"/applications/{token}/chats/{chat}/messages", json={"body": "x"})
    assert refused.status_code == 403 and refused.json() == {"error": "application suspended"}
    assert api.post(f"/applications/{token}/suspend").status_code == 200  # idempotent
    assert api.post(f"/applications/{token}/resume").json()["state"] == "active"
    status_within_bound(api, f"/applications/{token}/chats", 200)
    assert api.wait_chat(token, chat)["name"] == "room"


def test_rotate_token(api: Api, token: str):
    chat = api.new_chat(token, "kept")
    rotated = api.post(f"/applications/{token}/rotate-token", json={"grace_seconds": 120})
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    new = body["token"]
    assert new != token and body["previous_token"] == token
    assert RFC3339.match(body["previous_token_expires_at"]) and RFC3339.match(body["token_rotated_at"])
    assert body["token_generation"] == 1
    # Both tokens work during the grace period, on the same application and numbering.
    assert api.new_chat(new, "with the new token") == chat + 1
    assert api.new_chat(token, "with the old token") == chat + 2
    assert api.wait_chat(new, chat)["name"] == "kept"
    # ...but the former token (maybe the leaked one) never learns the new one.
    seen = api.get(f"/applications/{token}")
    assert seen.json()["token"] == token and new not in seen.text
    renamed = api.patch(f"/applications/{token}", json={"name": "renamed with the old token"})
    assert renamed.json()["token"] == token and new not in renamed.text
    assert api.get(f"/applications/{new}").json() == {**renamed.json(), "token": new}


def test_rotation_without_grace_ends_the_old_token(api: Api, token: str):
    new = api.post(f"/applications/{token}/rotate-token", json={"grace_seconds": 0}).json()["token"]
    status_within_bound(api, f"/applications/{token}/chats", 404)
    assert api.get(f"/applications/{token}").json() == {"error": "application not found"}
    assert api.get(f"/applications/{new}/chats").status_code == 200


def test_rotation_defaults_to_a_day_of_grace(api: Api, token: str):
    body = api.post(f"/applications/{token}/rotate-token").json()
    assert body["previous_token_expires_at"] > body["token_rotated_at"]


def test_limits_put_patch_and_get(api: Api, token: str):
    assert api.get(f"/applications/{token}/limits").json() == {
        "requests_per_second": None,
        "max_chats": None,
        "max_message_bytes": None,
    }
    put = api.put(f"/applications/{token}/limits", json={"max_chats": 2, "max_message_bytes": 100})
    assert put.status_code == 200 and put.json()["limits"]["max_chats"] == 2
    patched = api.patch(f"/applications/{token}/limits", json={"requests_per_second": 1000})
    assert patched.json()["limits"] == {"requests_per_second": 1000, "max_chats": 2, "max_message_bytes": 100}
    api.new_chat(token)
    api.new_chat(token)
    wait_for(
        lambda: api.post(f"/applications/{token}/chats", json={"name": "x"}).status_code == 409,
        BOUND,
        0.2,
        "maxChats in force",
    )
    bad = api.put(f"/applications/{token}/limits", json={"max_chats": -1})
    assert bad.status_code == 422 and "max_chats" in bad.json()["error"]


def test_usage(api: Api, token: str, sync_counts):
    chat = api.new_chat(token)
    api.new_message(token, chat, "one")
    api.new_message(token, chat, "two")
    api.wait_message(token, chat, 2)
    sync_counts(lambda: api.get(f"/applications/{token}/usage").json()["messages"] == 2)
    usage = api.get(f"/applications/{token}/usage")
    assert usage.status_code == 200
    body = usage.json()
    assert (body["chats"], body["messages"], body["state"]) == (1, 2, "active")
    assert RFC3339.match(body["last_activity_at"])


def test_tenant_endpoints_404_for_unknown_tokens(api: Api):
    for method, path in [
        ("POST", "suspend"),
        ("POST", "resume"),
        ("POST", "rotate-token"),
        ("GET", "limits"),
        ("PUT", "limits"),
        ("GET", "usage"),
    ]:
        resp = api.request(method, f"/applications/unknowntoken123/{path}")
        assert resp.status_code == 404 and resp.json() == {"error": "application not found"}, path
