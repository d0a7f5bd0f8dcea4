"""One database user per duty in the chart: the services' DATABASE_URL has a rows-only user, the migrations Job
its own user with schema rights, and with the bundled MariaDB the Job creates both first (chat_common.ops.grants, run
against a real MariaDB in tests/integration/test_database_grants.py)."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy.engine import make_url

from tests.chart.conftest import EXTERNAL_URLS
from tests.chart.rendering import of_kind, pod_specs, render

SEED = {"auth": {"passwordSeed": "s" * 32}}


def _secret_data(manifests, name: str) -> dict[str, str]:
    (secret,) = [m for m in of_kind(manifests, "Secret") if m.obj["metadata"]["name"] == name]
    return {k: base64.b64decode(v).decode() for k, v in secret.obj["data"].items()}


def _migrations_pod(manifests) -> dict:
    (spec,) = [
        s
        for m, s in pod_specs(manifests)
        if m.kind == "Job" and m.obj["metadata"]["name"] == "chat-chat-system-migrations"
    ]
    return spec


def test_bundled_mariadb_services_get_a_rows_only_user_and_migrations_their_own():
    manifests = render(SEED)
    data = _secret_data(manifests, "chat-chat-system")
    services, migrations = make_url(data["DATABASE_URL"]), make_url(data["DATABASE_MIGRATIONS_URL"])
    assert services.username == "chat_app" and services.password == data["MARIADB_APP_PASSWORD"]
    assert migrations.username == "chat" and migrations.password == data["MARIADB_PASSWORD"]
    assert services.password != migrations.password and services.database == migrations.database
    hook = _secret_data(manifests, "chat-chat-system-migrations")
    assert set(hook) == {"DATABASE_URL", "DATABASE_MIGRATIONS_URL", "MARIADB_ROOT_PASSWORD", "TOKEN_SEALING_KEY"}


def test_the_migrations_job_creates_the_users_then_migrates_as_the_migrations_user():
    spec = _migrations_pod(render(SEED))
    (grants,) = spec["initContainers"]
    assert grants["command"] == ["python", "-m", "chat_common.ops.grants"]
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in grants["env"] if "valueFrom" in e}
    assert set(keys) == {"DATABASE_URL", "DATABASE_MIGRATIONS_URL", "MARIADB_ROOT_PASSWORD"}
    assert {ref["name"] for ref in keys.values()} == {"chat-chat-system-migrations"}
    (migrate,) = spec["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in migrate["env"] if "valueFrom" in e}
    assert env["DATABASE_MIGRATIONS_URL"]["optional"] is True
    assert "MARIADB_ROOT_PASSWORD" not in env  # root stays with the grants step


def test_services_never_see_the_migrations_user_or_root():
    for manifest, spec in pod_specs(render(SEED)):
        if manifest.obj["metadata"]["name"].endswith(("-migrations", "-mariadb")):
            continue
        for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"DATABASE_MIGRATIONS_URL", "MARIADB_ROOT_PASSWORD", "MARIADB_PASSWORD"}, manifest.obj[
                "metadata"
            ]["name"]


def test_an_external_database_may_name_a_migrations_user():
    url = "mysql+pymysql://chat_ddl:pw@mysql.db.svc:3306/chat_system?charset=utf8mb4"
    manifests = render(
        {**EXTERNAL_URLS, "externalDatabase": {**EXTERNAL_URLS["externalDatabase"], "migrationsUrl": url}}
    )
    assert _secret_data(manifests, "chat-chat-system-migrations")["DATABASE_MIGRATIONS_URL"] == url
    assert "initContainers" not in _migrations_pod(manifests)  # users of an external database are the operator's
    manifests = render(EXTERNAL_URLS)
    assert "DATABASE_MIGRATIONS_URL" not in _secret_data(manifests, "chat-chat-system")


def test_one_user_for_both_duties_is_refused():
    with pytest.raises(Exception, match="appUsername must differ"):
        render({**SEED, "mariadb": {"auth": {"appUsername": "chat"}}})
