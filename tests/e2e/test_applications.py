"""Applications: create, show, list, rename — as a client sees them."""

import re

TOKEN = re.compile(r"^[A-Za-z0-9_-]{32}$")


def test_create_returns_token_name_and_count(api):
    resp = api.post("/applications", json={"name": "Acme"})
    assert resp.status_code == 201
    body = resp.json()
    assert set(body) == {"token", "name", "chats_count"}
    assert TOKEN.match(body["token"])
    assert body["name"] == "Acme" and body["chats_count"] == 0
    assert resp.headers["Location"].endswith(f"/applications/{body['token']}")


def test_create_accepts_rails_style_form_and_nested_json(api):
    form = api.post("/applications", data={"application[name]": "Form Co"})
    assert form.status_code == 201 and form.json()["name"] == "Form Co"
    flat_form = api.post("/applications", data={"name": "Flat Co"})
    assert flat_form.status_code == 201 and flat_form.json()["name"] == "Flat Co"
    nested = api.post("/applications", json={"application": {"name": "Nested Co"}})
    assert nested.status_code == 201 and nested.json()["name"] == "Nested Co"


def test_tokens_are_distinct(api):
    tokens = {api.new_application(f"a{i}") for i in range(20)}
    assert len(tokens) == 20


def test_show_and_rename_with_patch_and_put(api, token):
    assert api.get(f"/applications/{token}").json()["name"] == "test-app"
    patched = api.patch(f"/applications/{token}", json={"name": "Renamed"})
    assert patched.status_code == 200 and patched.json()["name"] == "Renamed"
    put = api.put(f"/applications/{token}", data={"application[name]": "Put name"})
    assert put.status_code == 200 and put.json() == {"token": token, "name": "Put name", "chats_count": 0}
    assert api.get(f"/applications/{token}").json()["name"] == "Put name"


def test_list_is_a_plain_array_without_internal_ids(api, token):
    resp = api.get("/applications", params={"per_page": 100})
    assert resp.status_code == 200
    items = resp.json()
    assert isinstance(items, list) and items
    assert all(set(item) == {"token", "name", "chats_count"} for item in items)


def test_idempotency_key_returns_the_same_application(api):
    first = api.post("/applications", json={"name": "once"}, headers={"Idempotency-Key": "k-123-once"})
    again = api.post("/applications", json={"name": "once"}, headers={"Idempotency-Key": "k-123-once"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["token"] == again.json()["token"]


def test_unknown_token_is_404(api):
    resp = api.get("/applications/not-a-real-token")
    assert resp.status_code == 404 and resp.json() == {"error": "application not found"}
    assert api.patch("/applications/nope", json={"name": "x"}).status_code == 404


def test_unicode_names_round_trip_verbatim(api):
    name = "  Ça va? مرحبا 你好 🎉 <b>'; DROP TABLE applications;--  "
    resp = api.post("/applications", json={"name": name})
    assert resp.status_code == 201
    assert api.get(f"/applications/{resp.json()['token']}").json()["name"] == name
