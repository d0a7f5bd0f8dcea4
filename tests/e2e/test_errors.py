"""Every documented error: JSON ``{"error": …}`` with the right status, never a 500, nothing stored."""

import os
from urllib.parse import urlsplit

import pytest


def assert_error(resp, status):
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"] and "SELECT" not in body["error"]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": None},
        {"name": 5},
        {"name": ["x"]},
        {"name": "x" * 256},
        {"name": "bad\x00nul"},
        {"name": "line\nbreak"},
        {"name": "invoice\u202etxt.exe"},
        {"name": "zero\u200bwidth"},
    ],
)
def test_invalid_names_are_422(api, token, payload):
    assert_error(api.post("/applications", json=payload), 422)
    assert_error(api.post(f"/applications/{token}/chats", json=payload), 422)
    assert_error(api.patch(f"/applications/{token}", json=payload), 422)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"body": ""},
        {"body": " \n\t "},
        {"body": "x" * 10_001},
        {"body": {"nested": 1}},
        {"body": "\x07"},
        {"body": "pay \u2067account\u2069"},
        {"body": "\ufeffhidden"},
    ],
)
def test_invalid_bodies_are_422(api, token, payload):
    chat = api.new_chat(token)
    assert_error(api.post(f"/applications/{token}/chats/{chat}/messages", json=payload), 422)


def test_limits_are_inclusive(api, token):
    assert api.post("/applications", json={"name": "x" * 255}).status_code == 201
    chat = api.new_chat(token)
    assert api.post(f"/applications/{token}/chats/{chat}/messages", json={"body": "y" * 10_000}).status_code == 201


def test_empty_body_means_missing_field(api, token):
    assert_error(api.post(f"/applications/{token}/chats", data=b"", headers={"Content-Type": "application/json"}), 422)


@pytest.mark.parametrize(
    "raw",
    [b'{"name": ', b"\xff\xfe\x00garbage", b'{"name": "\xc3\x28"}', b"[" * 5000 + b"]" * 5000, b"nul\x00", b'"str"'],
)
def test_malformed_json_is_400(api, token, raw):
    resp = api.post(f"/applications/{token}/chats", data=raw, headers={"Content-Type": "application/json"})
    assert_error(resp, 400)


def test_non_object_json_is_400(api, token):
    assert_error(api.post(f"/applications/{token}/chats", json=["name"]), 400)


def test_invalid_utf8_form_is_400(api, token):
    resp = api.post(
        f"/applications/{token}/chats",
        data=b"name=%C3%28",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(resp, 400)


def test_lone_surrogate_is_rejected(api, token):
    resp = api.post(
        f"/applications/{token}/chats", data=b'{"name": "\\ud800"}', headers={"Content-Type": "application/json"}
    )
    assert resp.status_code in (400, 422)
    assert_error(resp, resp.status_code)


def test_unsupported_media_type_is_415(api, token):
    resp = api.post(f"/applications/{token}/chats", data=b"name=x", headers={"Content-Type": "text/plain"})
    assert_error(resp, 415)


def test_oversized_body_is_413(api, token):
    resp = api.post(f"/applications/{token}/chats", json={"name": "x" * 70_000})
    assert_error(resp, 413)


def test_413_keeps_the_keep_alive_connection_usable(base_url):
    import requests

    with requests.Session() as session:
        for _ in range(3):
            resp = session.post(f"{base_url}/applications", json={"name": "x" * 200_000}, timeout=10)
            assert_error(resp, 413)
            # The next request on the same pooled connection must not hit a connection the server dropped.
            assert session.get(f"{base_url}/healthz", timeout=10).status_code == 200


def test_wrong_method_is_405(api, token):
    assert_error(api.request("DELETE", f"/applications/{token}/chats/1"), 405)
    assert_error(api.request("POST", f"/applications/{token}/chats/1"), 405)
    assert_error(api.request("PATCH", "/applications"), 405)


@pytest.mark.parametrize(
    "path",
    [
        "/applications/{t}/chats/abc",
        "/applications/{t}/chats/0",
        "/applications/{t}/chats/-1",
        "/applications/{t}/chats/99999999999",
        "/applications/{t}/chats/1/messages/x",
        "/applications/{t}/chats/999",
        "/applications/{t}/chats/999/messages",
        "/applications/{t}/chats/999/messages/1",
        "/nope",
        "/applications/{t}/../../etc/passwd",
        "/applications/{t}/chats/1.5",
    ],
)
def test_unknown_or_non_numeric_is_404(api, token, path):
    resp = api.get(path.format(t=token))
    if os.environ.get("API_BASE_URL") and not urlsplit(resp.url).path.startswith("/applications/"):
        # Outside the published routes the ingress answers 404 itself (its own body, not the API's JSON).
        assert resp.status_code == 404
        return
    assert_error(resp, 404)


def test_create_in_unknown_parents_is_404(api, token):
    assert_error(api.post("/applications/unknown-token/chats", json={"name": "x"}), 404)
    assert_error(api.post(f"/applications/{token}/chats/42/messages", json={"body": "x"}), 404)
    assert_error(api.patch(f"/applications/{token}/chats/42", json={"name": "x"}), 404)
    chat = api.new_chat(token)
    assert_error(api.patch(f"/applications/{token}/chats/{chat}/messages/5", json={"body": "x"}), 404)


@pytest.mark.parametrize(
    "params",
    [{"page": "0"}, {"page": "abc"}, {"per_page": "0"}, {"per_page": "101"}, {"per_page": "-5"}, {"page": "1e9"}],
)
def test_bad_pagination_is_400(api, token, params):
    assert_error(api.get(f"/applications/{token}/chats", params=params), 400)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "application/json"])
def test_an_empty_body_with_content_length_0_is_422(api, token, content_type):
    # An empty body is a body without the field: a validation error (422), never 411 — its length was sent.
    headers = {"Content-Type": content_type, "Content-Length": "0"}
    chat = api.new_chat(token, "room")
    for method, path in (
        ("POST", f"/applications/{token}/chats"),
        ("PATCH", f"/applications/{token}"),
        ("POST", f"/applications/{token}/chats/{chat}/messages"),
    ):
        assert_error(api.request(method, path, data=b"", headers=headers), 422)


@pytest.mark.parametrize("spelling", ["%2B1", "01", "1_0", "%EF%BC%91", "%D9%A1"])
def test_a_chat_number_is_strict_ascii_digits(api, token, spelling):
    chat = api.new_chat(token, "room")
    assert chat == 1
    api.wait_chat(token, chat)
    assert_error(api.get(f"/applications/{token}/chats/{spelling}"), 404)


def test_chunked_body_without_length_is_411(in_process_only, api, token):
    # Behind ingress-nginx the body is buffered and forwarded with a Content-Length: the API sees no chunking.
    def chunks():
        yield b'{"name": "chunked"}'

    resp = api.post(f"/applications/{token}/chats", data=chunks(), headers={"Content-Type": "application/json"})
    assert_error(resp, 411)


def test_security_headers(api, token):
    resp = api.get(f"/applications/{token}")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("key", ["é-non-ascii", "has space", "x" * 129, "tab\tkey"])
def test_bad_idempotency_keys_are_422(api, key):
    resp = api.post("/applications", json={"name": "k"}, headers={"Idempotency-Key": key.encode("utf-8")})
    assert_error(resp, 422)
