"""The services reach the bundled Elasticsearch as a user of their own, not the `elastic` superuser: a file-realm
user made by the pod's init container, whose role covers only the search alias and the indices behind it.

Elasticsearch does not run on the test machine: this checks what the chart renders (the init script runs on a real
cluster only, e.g. `make kind-up`)."""

from __future__ import annotations

import base64

from sqlalchemy.engine import make_url

from tests.chart.rendering import of_kind, pod_specs, render

SEED = {"auth": {"passwordSeed": "s" * 32}, "config": {"searchIndex": "chat_msgs"}}


def test_the_services_url_names_the_search_user_not_elastic():
    (secret,) = [m for m in of_kind(render(SEED), "Secret") if m.obj["metadata"]["name"] == "chat-chat-system"]
    data = {k: base64.b64decode(v).decode() for k, v in secret.obj["data"].items()}
    url = make_url(data["ELASTICSEARCH_URL"].replace("http://", "mysql://", 1))  # just to read user and password
    assert (url.username, url.password) == ("chat_search", data["ELASTICSEARCH_APP_PASSWORD"])
    assert data["ELASTICSEARCH_APP_PASSWORD"] != data["ELASTICSEARCH_PASSWORD"]


def test_the_init_container_makes_the_user_with_index_privileges_only():
    (spec,) = [s for m, s in pod_specs(render(SEED)) if m.obj["metadata"]["name"].endswith("-elasticsearch")]
    (init,) = spec["initContainers"]
    script = init["command"][-1]
    assert 'names: ["chat_msgs", "chat_msgs-*"]' in script
    assert "privileges: [read, write, create_index, manage, view_index_metadata]" in script
    assert "cluster:" not in script and "superuser" not in script
    assert 'elasticsearch-users useradd "$APP_USER" -p "$APP_PASSWORD" -r chat_system_search' in script
    env = {e["name"]: e for e in init["env"]}
    assert env["APP_USER"]["value"] == "chat_search"
    assert env["APP_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "ELASTICSEARCH_APP_PASSWORD"
