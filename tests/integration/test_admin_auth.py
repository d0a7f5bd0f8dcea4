"""Admin-only operations demand the configured key; tenant operations are authorised by the token alone."""

import falcon.testing
import pytest
import pytest_asyncio

from chat_api.app import build_service, create_app

# One app (and one event loop) for the module: the lifespan opens the connections once, as a worker does.
on_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(namespace):
    settings = namespace.settings.__class__(**{**namespace.settings.__dict__, "admin_api_key": "s3cret-admin"})
    service, readiness, lifecycle, streams = build_service(settings)
    # The conductor runs the ASGI lifespan: connections open and close as they do under uvicorn.
    async with falcon.testing.ASGIConductor(create_app(service, settings, readiness, lifecycle, streams)) as conductor:
        yield conductor


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
@on_module_loop
async def test_missing_or_wrong_key_is_401(client, headers):
    for method, path in (("GET", "/applications"), ("POST", "/applications"), ("DELETE", "/applications/x")):
        resp = await client.simulate_request(method, path, headers=headers, json={"name": "x"})
        assert resp.status_code == 401, (method, resp.text)
        assert resp.json == {"error": "this operation needs the admin API key as a Bearer token"}
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@on_module_loop
async def test_right_key_creates_lists_and_deletes(client):
    created = await client.simulate_post("/applications", headers=ADMIN, json={"name": "admin made"})
    assert created.status_code == 201
    token = created.json["token"]
    assert (await client.simulate_get("/applications", headers=ADMIN, params={"per_page": 100})).status_code == 200
    # The token alone reads and renames its application.
    assert (await client.simulate_get(f"/applications/{token}")).json["name"] == "admin made"
    assert (await client.simulate_patch(f"/applications/{token}", json={"name": "renamed"})).status_code == 200
    assert (await client.simulate_delete(f"/applications/{token}", headers=ADMIN)).status_code == 204
    assert (await client.simulate_get(f"/applications/{token}")).status_code == 404
    assert (await client.simulate_delete(f"/applications/{token}", headers=ADMIN)).status_code == 404


def test_admin_key_is_compared_in_constant_time():
    import inspect

    from chat_api.resources import params

    assert "hmac.compare_digest" in inspect.getsource(params.require_admin)
