"""Tokens at rest, through the running API: the database holds digests and sealed copies, never a token.

Applications created, rotated and renamed through the REST API (the session's system, with a sealing key as the
chart configures one): no token, current or former, appears anywhere in the ``applications`` table; the digests are
what MySQL is asked for; both tokens keep working and the admin listing still shows the current token (unsealed).
"""

from __future__ import annotations

from sqlalchemy import text

from chat_common.tenancy.tokens import token_digest
from chat_devtools.http import Api


def test_the_database_holds_no_token_only_digests_and_sealed_copies(system, engine):
    api = Api(system.base_url)
    old = api.new_application("at rest")
    rotated = api.post(f"/applications/{old}/rotate-token", json={"grace_seconds": 600})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["token"]
    assert rotated.json()["previous_token"] == old
    assert api.patch(f"/applications/{old}", json={"name": "renamed at rest"}).status_code == 200
    with engine.connect() as conn:
        dump = repr(conn.execute(text("SELECT * FROM applications")).all())
        row = conn.execute(
            text("SELECT token, previous_token, previous_token_digest FROM applications WHERE token_digest = :d"),
            {"d": token_digest(new)},
        ).one()
    assert old not in dump and new not in dump
    assert row.token is None and row.previous_token is None and row.previous_token_digest == token_digest(old)
    # Nothing changes for clients: both tokens work, the former never shows the new one, the admin list shows it.
    assert api.get(f"/applications/{new}").json()["name"] == "renamed at rest"
    assert api.get(f"/applications/{old}").json()["token"] == old
    assert api.get("/application", headers={"Authorization": f"Bearer {new}"}).json()["token"] == new
    listed = {a["token"] for page in range(1, 50) for a in api.get(f"/applications?page={page}&per_page=100").json()}
    assert new in listed and old not in listed
