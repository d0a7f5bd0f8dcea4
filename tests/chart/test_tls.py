"""TLS values of the chart: CA Secrets of the dependencies mounted where the URLs name them, and the ingress.

Every chat-system container (API, writers, webhook dispatcher, count sync, migrations, operator) gets each CA of
``tls.caSecrets`` at /etc/chat-system/tls/<dependency>/ca.crt, read-only and only the ``ca.crt`` key; RabbitMQ and
Elasticsearch are told through RABBITMQ_CA_FILE / ELASTICSEARCH_CA_FILE, MySQL and Redis through their URLs. The
production example (helm/values-external.yaml) turns all of it on, and the ingress terminates TLS.
"""

from __future__ import annotations

import pytest

from tests.chart.conftest import EXTERNAL_URLS, EXTERNAL_VALUES
from tests.chart.rendering import containers, load_values_file, of_kind, pod_specs, render

CA_SECRETS = {"mysql": "db-ca", "redis": "db-ca", "rabbitmq": "mq-ca", "elasticsearch": "search-ca"}
COMPONENTS = {"api", "chat-writer", "message-writer", "webhook-dispatcher", "counter-cron", "migrations", "operator"}


def _chat_pods(manifests):
    for manifest, spec in pod_specs(manifests):
        component = manifest.obj["metadata"]["labels"].get("app.kubernetes.io/component")
        if component in COMPONENTS:
            yield component, spec


def test_each_ca_secret_is_mounted_in_every_component():
    manifests = render({**EXTERNAL_URLS, "tls": {"caSecrets": CA_SECRETS}})
    seen = set()
    for component, spec in _chat_pods(manifests):
        seen.add(component)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for dependency, secret in CA_SECRETS.items():
            volume = volumes[f"ca-{dependency}"]
            assert volume["secret"] == {"secretName": secret, "items": [{"key": "ca.crt", "path": "ca.crt"}]}
        for container in spec["containers"]:
            mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
            for dependency in CA_SECRETS:
                mount = mounts[f"ca-{dependency}"]
                assert mount == {
                    "name": f"ca-{dependency}",
                    "mountPath": f"/etc/chat-system/tls/{dependency}",
                    "readOnly": True,
                }
    assert seen == COMPONENTS


def test_rabbitmq_and_elasticsearch_are_told_their_ca_files():
    manifests = render({**EXTERNAL_URLS, "tls": {"caSecrets": CA_SECRETS}})
    for component, spec in _chat_pods(manifests):
        if component in ("migrations", "webhook-dispatcher"):
            continue  # they talk to MySQL only (its CA is named in the URL)
        env = {e["name"]: e.get("value") for c in spec["containers"] for e in c.get("env", [])}
        if component in {"api", "chat-writer", "message-writer"}:  # the count sync and the operator use no broker
            assert env["RABBITMQ_CA_FILE"] == "/etc/chat-system/tls/rabbitmq/ca.crt", component
        else:
            assert "RABBITMQ_CA_FILE" not in env and "RABBITMQ_URL" not in env, component
        assert env["ELASTICSEARCH_CA_FILE"] == "/etc/chat-system/tls/elasticsearch/ca.crt", component


def test_without_ca_secrets_nothing_is_mounted():
    for _, spec in _chat_pods(render(EXTERNAL_URLS)):
        assert not [v for v in spec["volumes"] if v["name"].startswith("ca-")]
        for container in containers(spec):
            assert "RABBITMQ_CA_FILE" not in {e["name"] for e in container.get("env", [])}


def test_a_ca_secret_name_must_be_a_secret_name():
    with pytest.raises(Exception, match="caSecrets"):
        render({**EXTERNAL_URLS, "tls": {"caSecrets": {"mysql": "Not A Name"}}})


def test_the_production_example_turns_tls_on_everywhere():
    values = load_values_file(EXTERNAL_VALUES)
    assert values["tls"]["caSecrets"] == CA_SECRETS
    (ingress,) = of_kind(render(values), "Ingress")
    assert ingress.obj["spec"]["tls"] == [{"secretName": "chat-example-com-tls", "hosts": ["chat.example.com"]}]
    text = EXTERNAL_VALUES.read_text()
    for url in (
        "ssl_ca=/etc/chat-system/tls/mysql/ca.crt",
        "rediss://",
        "ssl_ca_certs=/etc/chat-system/tls/redis/ca.crt",
        "amqps://",
        "https://",
    ):
        assert url in text
