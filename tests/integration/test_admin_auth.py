"""Admin-only operations demand the configured key; tenant operations are authorised by the token alone."""

import falcon.testing
import pytest

from chat_api.app import build_service, create_app


@pytest.fixture
def client(namespace):
    settings = namespace.settings.__class__(**{**namespace.settings.__dict__, "admin_api_key": "s3cret-admin"})
    service, readiness = build_service(settings)
    yield falcon.testing.TestClient(create_app(service, settings, readiness))
    service.publisher.close()


ADMIN = {"Authorization": "Bearer s3cret-admin"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic s3cret-admin"},
        {"Authorization": "Bearer"},
        {"Authorization": "bearer s3cret-admin-extra"},
    ],
)
def test_missing_or_wrong_key_is_401(client, headers):
    for method, path in (("GET", "/applications"), ("POST", "/applications"), ("DELETE", "/applications/x")):
        resp = client.simulate_request(method, path, headers=headers, json={"name": "x"})
        assert resp.status_code == 401, (method, resp.text)
        assert resp.json == {"error": "this operation needs the admin API key as a Bearer token"}
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_right_key_creates_lists_and_deletes(client):
    created = client.simulate_post("/applications", headers=ADMIN, json={"name": "admin made"})
    assert created.status_code == 201
    token = created.json["token"]
    assert client.simulate_get("/applications", headers=ADMIN, params={"per_page": 100}).status_code == 200
    # The token alone reads and renames its application.
    assert client.simulate_get(f"/applications/{token}").json["name"] == "admin made"
    assert client.simulate_patch(f"/applications/{token}", json={"name": "renamed"}).status_code == 200
    assert client.simulate_delete(f"/applications/{token}", headers=ADMIN).status_code == 204
    assert client.simulate_get(f"/applications/{token}").status_code == 404
    assert client.simulate_delete(f"/applications/{token}", headers=ADMIN).status_code == 404


def test_admin_key_is_compared_in_constant_time():
    import inspect

    from chat_api.resources import params

    assert "hmac.compare_digest" in inspect.getsource(params.require_admin)
