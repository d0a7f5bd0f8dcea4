"""Webhook endpoints' rules (chat_common.tenancy.webhooks: what a manager may ask for, the JSON shape, sealing) and the
admin routes over a service on fakes (statuses, bodies, the secret shown once, the store's errors as HTTP)."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
from urllib.parse import urlencode

import pytest
from falcon import testing
from sqlalchemy.exc import OperationalError

from chat_api.app import create_app
from chat_common.config import Settings
from chat_common.tenancy.tokens import TokenSealer, new_sealing_key
from chat_common.tenancy.webhooks import (
    K8S,
    EndpointChanges,
    EndpointSpec,
    WebhookEndpoint,
    check_cursor,
    new_name,
    new_secret,
    secret_context,
)
from chat_common.validation import Invalid
from chat_common.webhooks.egress import EgressPolicy
from chat_common.wire.events import EVENT_TYPES
from tests.unit.fakes import build
from tests.unit.test_resources_http import FORM, post_form

POLICY = EgressPolicy()
URL = "https://hooks.example.com/chat"


def secret_of(size: int) -> str:
    return "whsec_" + base64.b64encode(bytes(size)).decode()


# -- parse rules -------------------------------------------------------------------------------------------------
def test_a_spec_takes_defaults_and_checks_every_field():
    spec = EndpointSpec.parse({"name": "orders-1", "url": URL}, POLICY)
    assert spec == EndpointSpec("orders-1", URL, EVENT_TYPES, None, True)
    full = EndpointSpec.parse(
        {"name": "a", "url": URL, "event_types": ["message.created", "chat.created"], "secret": secret_of(24),
         "enabled": False},
        POLICY,
    )  # fmt: skip
    assert full.event_types == ("chat.created", "message.created") and full.secret == secret_of(24) and not full.enabled
    generated = EndpointSpec.parse({"url": URL}, POLICY, generate_name=True).name
    assert generated.startswith("wh-") and len(generated) == 11 and new_name() != new_name()
    for bad in (
        {"url": URL},  # a name is required unless generated
        {"name": "Upper", "url": URL},
        {"name": "-edge", "url": URL},
        {"name": "a" * 64, "url": URL},
        {"name": "a"},
        {"name": "a", "url": "http://hooks.example.com/"},  # https only by default
        {"name": "a", "url": "https://127.0.0.1/"},
        {"name": "a", "url": "https://10.1.2.3/"},
        {"name": "a", "url": URL, "event_types": []},
        {"name": "a", "url": URL, "event_types": ["chat.deleted"]},
        {"name": "a", "url": URL, "secret": "whsec_short"},
        {"name": "a", "url": URL, "secret": secret_of(23)},
        {"name": "a", "url": URL, "secret": secret_of(65)},
        {"name": "a", "url": URL, "secret": "sk_" + secret_of(32)[6:]},
        {"name": "a", "url": URL, "secret": "whsec_not base64!"},
        {"name": "a", "url": URL, "enabled": "yes"},
        {"name": "a", "url": URL, "enabled": "true"},  # JSON takes booleans (forms are shaped by the resource)
        {"name": "a", "url": URL, "event_types": "chat.created"},
        {"name": "a", "url": URL, "event_types": ["chat.created", "chat.created"]},
        {"name": "a", "url": "https://hooks.example.com/a b"},
        {"name": "a", "url": "https://hooks.example.com/\t"},
        {"name": "", "url": URL},
        {"name": "a", "url": URL, "extra": 1},
        ["a"],
    ):
        with pytest.raises(Invalid):
            EndpointSpec.parse(bad, POLICY)
    assert EndpointSpec.parse({"name": "a" * 63, "url": URL, "secret": secret_of(64)}, POLICY).secret
    local = EgressPolicy(allow=(ipaddress.ip_network("127.0.0.0/8"),), allow_http=True)  # what tests deploy with
    assert EndpointSpec.parse({"name": "a", "url": "http://127.0.0.1:8080/h"}, local).url.startswith("http://")


def test_changes_take_only_url_event_types_and_enabled():
    assert EndpointChanges.parse({"enabled": True}, POLICY) == EndpointChanges(enabled=True)
    assert EndpointChanges.parse({"url": URL, "event_types": ["chat.updated"]}, POLICY).event_types == ("chat.updated",)
    for bad in ({}, {"secret": new_secret()}, {"name": "b"}, {"url": "ftp://x"}, None):
        with pytest.raises(Invalid):
            EndpointChanges.parse(bad, POLICY)


def test_a_generated_secret_is_standard_webhooks_shaped():
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:], validate=True)) == 32


def test_cursors_are_the_event_logs():
    assert check_cursor("0") == 0 and check_cursor("42") == 42 and check_cursor(7) == 7
    for bad in ("-1", "01", "1.5", "x", str(2**63), True, None):
        with pytest.raises(Invalid):
            check_cursor(bad)


def test_the_json_shape_shows_the_secret_only_when_it_carries_one():
    endpoint = WebhookEndpoint("a", URL, EVENT_TYPES, True, "failing", 12, K8S, failing_since=1_800_000_000.0)
    shape = endpoint.public()
    assert shape["id"] == "a" and shape["position"] == "12" and shape["failing_since"] == "2027-01-15T08:00:00Z"
    assert "secret" not in shape
    carrying = WebhookEndpoint("a", URL, EVENT_TYPES, True, "healthy", 0, K8S, secret="whsec_AAAA")
    assert carrying.public()["secret"] == "whsec_AAAA" and "whsec_AAAA" not in repr(carrying)  # never in a log line


def test_a_sealed_secret_opens_only_for_its_endpoint():
    sealer = TokenSealer(new_sealing_key())
    secret = new_secret()
    sealed = sealer.seal_for(secret, secret_context(1, "a"))
    assert sealed.startswith("v1.") and secret not in sealed
    assert sealer.unseal_for(sealed, secret_context(1, "a")) == secret
    assert sealer.unseal_for(sealed, secret_context(2, "a")) is None
    assert sealer.unseal_for(sealed, secret_context(1, "b")) is None
    assert TokenSealer(new_sealing_key()).unseal_for(sealed, secret_context(1, "a")) is None
    assert sealer.unseal_for("v1.garbage", "x") is None and sealer.unseal_for("", "x") is None


# -- the admin routes --------------------------------------------------------------------------------------------
@pytest.fixture
def admin():
    service, world = build()
    http = testing.TestClient(create_app(service, Settings(), {}, lifecycle=None))
    return http, world, world.application().token


def test_register_list_show_change_and_delete(admin):
    http, world, token = admin
    base = f"/applications/{token}/webhooks"
    created = http.simulate_post(base, json={"name": "orders", "url": URL, "event_types": ["message.created"]})
    assert created.status_code == 201 and created.headers["Location"].endswith(f"{base}/orders")
    assert created.json["secret"].startswith("whsec_") and created.json["event_types"] == ["message.created"]
    assert world.webhooks.secrets[(1, "orders")] == [created.json["secret"]]
    listed = http.simulate_get(base)
    assert [e["id"] for e in listed.json["webhooks"]] == ["orders"] and "secret" not in listed.json["webhooks"][0]
    shown = http.simulate_get(f"{base}/orders")
    assert shown.status_code == 200 and "secret" not in shown.json and shown.json["state"] == "healthy"
    assert http.simulate_patch(f"{base}/orders", json={"url": URL + "/v2"}).json["url"] == URL + "/v2"
    generated = post_form(http, base, {"url": URL, "name": "", "event_types": "chat.created,message.created"})
    assert generated.status_code == 201 and generated.json["id"].startswith("wh-")
    assert generated.json["event_types"] == ["chat.created", "message.created"]
    form = {"body": urlencode({"enabled": "false"}), "headers": FORM}
    disabled = http.simulate_patch(f"{base}/{generated.json['id']}", **form)
    assert disabled.status_code == 200 and disabled.json["enabled"] is False
    assert http.simulate_delete(f"{base}/orders").status_code == 204
    assert http.simulate_get(f"{base}/orders").status_code == 404
    assert http.simulate_delete(f"{base}/orders").status_code == 404


def test_bad_input_clashes_and_the_limit_are_4xx(admin):
    http, world, token = admin
    base = f"/applications/{token}/webhooks"
    assert http.simulate_post(base, json={"name": "a", "url": "https://169.254.169.254/"}).status_code == 422
    assert http.simulate_post(base, json={"name": "a"}).status_code == 422
    assert http.simulate_post(base, json=["a"]).status_code == 400
    assert http.simulate_post(base).status_code == 422  # no body: no url
    assert http.simulate_post(base, json={"name": "a", "url": URL}).status_code == 201
    clash = http.simulate_post(base, json={"name": "a", "url": URL})
    assert clash.status_code == 409 and "exists already" in clash.json["error"]
    world.webhooks.max_endpoints = 1
    assert http.simulate_post(base, json={"name": "b", "url": URL}).status_code == 409
    assert http.simulate_patch(f"{base}/a", json={"secret": new_secret()}).status_code == 422
    assert http.simulate_patch(f"{base}/a", json={}).status_code == 422
    assert http.simulate_patch(f"{base}/nope", json={"enabled": False}).status_code == 404
    assert http.simulate_get("/applications/unknown-token/webhooks").status_code == 404


def test_endpoints_the_operator_manages_are_read_only_here(admin):
    http, world, token = admin
    world.webhooks.create(1, EndpointSpec("from-k8s", URL), managed_by=K8S)
    base = f"/applications/{token}/webhooks/from-k8s"
    assert http.simulate_get(base).json["managed_by"] == "k8s"
    assert http.simulate_patch(base, json={"enabled": False}).status_code == 409
    assert http.simulate_delete(base).status_code == 409
    assert http.simulate_post(f"{base}/rotate-secret").status_code == 409
    assert http.simulate_post(f"{base}/replay", params={"from": "0"}).status_code == 200


def test_re_enabling_a_disabled_endpoint_makes_it_healthy(admin):
    http, world, token = admin
    http.simulate_post(f"/applications/{token}/webhooks", json={"name": "a", "url": URL})
    disabled = dataclasses.replace(world.webhooks.rows[(1, "a")], state="disabled", disabled_reason="410")
    world.webhooks.rows[(1, "a")] = disabled  # what the dispatcher writes on a 410
    enabled = http.simulate_patch(f"/applications/{token}/webhooks/a", json={"enabled": True})
    assert enabled.json["state"] == "healthy" and enabled.json["disabled_reason"] is None


def test_rotation_answers_the_new_secret_once(admin):
    http, world, token = admin
    first = http.simulate_post(f"/applications/{token}/webhooks", json={"name": "a", "url": URL}).json["secret"]
    rotate = f"/applications/{token}/webhooks/a/rotate-secret"
    rotated = http.simulate_post(rotate)
    assert rotated.status_code == 200 and rotated.json["secret"] not in (None, first)
    assert rotated.json["previous_secret_expires_at"] is not None
    assert world.webhooks.secrets[(1, "a")] == [rotated.json["secret"], first]
    given = new_secret()
    assert http.simulate_post(rotate, json={"secret": given, "grace_seconds": 0}).json["secret"] == given
    assert world.webhooks.secrets[(1, "a")] == [given]
    assert post_form(http, rotate, {"grace_seconds": "60"}).status_code == 200
    for bad in ({"secret": "whsec_x"}, {"grace_seconds": -1}, {"grace_seconds": 31 * 86_400}, {"other": 1}):
        assert http.simulate_post(rotate, json=bad).status_code == 422, bad
    assert http.simulate_post(f"/applications/{token}/webhooks/nope/rotate-secret").status_code == 404


def test_replay_answers_410_for_a_pruned_cursor_and_422_beyond_the_head(admin):
    http, world, token = admin
    world.webhooks.head = 100
    http.simulate_post(f"/applications/{token}/webhooks", json={"name": "a", "url": URL})
    world.webhooks.oldest, world.webhooks.held[(1, "a")] = 50, 3
    replay = f"/applications/{token}/webhooks/a/replay"
    replayed = http.simulate_post(replay, params={"from": "49"})
    assert replayed.status_code == 200 and replayed.json["position"] == "49" and (1, "a") not in world.webhooks.held
    assert http.simulate_post(replay, params={"from": "48"}).status_code == 410
    assert http.simulate_post(replay, params={"from": "101"}).status_code == 422
    assert http.simulate_post(replay).status_code == 422
    assert http.simulate_post(replay, params={"from": "-3"}).status_code == 422


def test_without_a_sealing_key_registration_is_503_with_retry_after(admin):
    http, world, token = admin
    world.webhooks.sealing = False
    refused = http.simulate_post(f"/applications/{token}/webhooks", json={"name": "a", "url": URL})
    assert refused.status_code == 503 and "WEBHOOK_SEALING_KEY" in refused.json["error"]
    assert int(refused.headers["Retry-After"]) > 0
    assert http.simulate_get(f"/applications/{token}/webhooks").json == {"webhooks": []}


def test_the_routes_need_the_admin_key_when_one_is_set():
    service, world = build()
    http = testing.TestClient(create_app(service, Settings(admin_api_key="s3cret"), {}, lifecycle=None))
    token = world.application().token
    assert http.simulate_get(f"/applications/{token}/webhooks").status_code == 401
    assert http.simulate_post(f"/applications/{token}/webhooks", json={"url": URL}).status_code == 401
    allowed = http.simulate_get(f"/applications/{token}/webhooks", headers={"Authorization": "Bearer s3cret"})
    assert allowed.status_code == 200


def test_a_store_fault_is_503_not_500(admin):
    http, world, token = admin
    world.webhooks.fail("list", OperationalError("SELECT", {}, Exception("gone")))
    resp = http.simulate_get(f"/applications/{token}/webhooks")
    assert resp.status_code == 503 and "Retry-After" in resp.headers
