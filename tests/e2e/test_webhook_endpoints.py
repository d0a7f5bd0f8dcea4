"""A tenant's webhook endpoints over HTTP (admin routes): register (the secret shown once), list, show, change,
rotate the secret, replay from a cursor of the event log, delete; and what an application's deletion takes with it.

Black box: runs against the local system or ``API_BASE_URL`` (a deployment with ``WEBHOOK_SEALING_KEY``, as the chart
makes one). Receivers are at ``.invalid`` names (RFC 6761: never resolve), so a delivery service running beside
the API delivers nothing anywhere. The rules behind each answer are covered in ``tests/unit/test_webhook_endpoints.py``
and, against MariaDB, ``tests/integration/test_webhook_endpoints.py``.
"""

from __future__ import annotations

import base64

from chat_devtools.http import Api
from tests.e2e.test_event_log import read_when

URL = "https://receiver.invalid/chat-events"


def test_an_endpoint_is_registered_changed_rotated_replayed_and_deleted(api: Api, token: str):
    base = f"/applications/{token}/webhooks"
    created = api.post(base, json={"name": "orders", "url": URL, "event_types": ["message.created"]})
    assert created.status_code == 201, created.text
    endpoint = created.json()
    secret = endpoint["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert created.headers["Location"].endswith(f"{base}/orders")
    assert (endpoint["state"], endpoint["enabled"], endpoint["managed_by"]) == ("healthy", True, "api")

    listed = api.get(base).json()["webhooks"]
    assert [e["id"] for e in listed] == ["orders"] and all("secret" not in e for e in listed)
    assert "secret" not in api.get(f"{base}/orders").json()
    assert api.post(base, json={"name": "orders", "url": URL}).status_code == 409
    refused = api.post(base, json={"name": "internal", "url": "https://169.254.169.254/latest"})
    assert refused.status_code == 422 and "refused" in refused.json()["error"]

    changed = api.patch(f"{base}/orders", json={"event_types": ["chat.created", "message.created"], "enabled": False})
    assert changed.status_code == 200 and changed.json()["enabled"] is False
    assert changed.json()["event_types"] == ["chat.created", "message.created"]

    rotated = api.post(f"{base}/orders/rotate-secret", json={"grace_seconds": 60})
    assert rotated.status_code == 200 and rotated.json()["secret"] not in (None, secret)
    assert rotated.json()["previous_secret_expires_at"] is not None

    chat = api.new_chat(token, "room")
    events, cursor, _ = read_when(api, f"/applications/{token}/events", 1)
    assert events[0]["chat_number"] == chat
    before = str(int(events[0]["id"]) - 1)
    replayed = api.post(f"{base}/orders/replay", params={"from": before})
    assert replayed.status_code == 200 and replayed.json()["position"] == before
    beyond = api.post(f"{base}/orders/replay", params={"from": str(int(cursor) + 10**12)})
    assert beyond.status_code == 422
    assert api.post(f"{base}/nothing/replay", params={"from": before}).status_code == 404

    assert api.request("DELETE", f"{base}/orders").status_code == 204
    assert api.get(f"{base}/orders").status_code == 404


def test_deleting_the_application_deletes_its_endpoints(api: Api):
    token = api.new_application("webhooks to delete")
    assert api.post(f"/applications/{token}/webhooks", json={"url": URL}).status_code == 201
    assert api.request("DELETE", f"/applications/{token}").status_code == 204
    assert api.get(f"/applications/{token}/webhooks").status_code == 404
