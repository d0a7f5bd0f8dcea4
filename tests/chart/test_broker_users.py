"""One RabbitMQ user per component in the chart (chat_common.ops.broker_users): which Secret key each component's
RABBITMQ_URL comes from, KEDA's monitoring-only user, and no broker credential where none is used. The users'
permissions themselves are checked on a real broker in tests/cluster/test_broker_users.py."""

from __future__ import annotations

import base64
import json

from tests.chart.conftest import EXTERNAL_URLS
from tests.chart.rendering import KEDA_APIS, of_kind, pod_specs, render

SEED = {"auth": {"passwordSeed": "s" * 32}}


def _broker_keys(manifests) -> dict[str, str | None]:
    """Pod name -> the Secret key its RABBITMQ_URL comes from (None: no RABBITMQ_URL)."""
    keys: dict[str, str | None] = {}
    for manifest, spec in pod_specs(manifests):
        component = manifest.obj["metadata"]["labels"].get("app.kubernetes.io/component")
        if component not in {"api", "chat-writer", "message-writer", "counter-cron", "operator"}:
            continue
        env = {e["name"]: e for c in spec["containers"] for e in c.get("env", [])}
        keys[component] = env["RABBITMQ_URL"]["valueFrom"]["secretKeyRef"]["key"] if "RABBITMQ_URL" in env else None
    return keys


def test_each_component_connects_as_its_own_user():
    assert _broker_keys(render(SEED)) == {
        "api": "RABBITMQ_URL",
        "chat-writer": "RABBITMQ_WRITER_URL",
        "message-writer": "RABBITMQ_WRITER_URL",
        "counter-cron": None,  # the count sync and the operator use no broker
        "operator": None,
    }


def test_keda_reads_queue_depths_as_the_monitoring_user():
    manifests = render(SEED, api_versions=KEDA_APIS)
    (auth,) = of_kind(manifests, "TriggerAuthentication")
    assert auth.obj["spec"]["secretTargetRef"][0]["key"] == "RABBITMQ_MONITOR_URL"
    (secret,) = [m for m in of_kind(manifests, "Secret") if m.obj["metadata"]["name"] == "chat-chat-system"]
    data = {k: base64.b64decode(v).decode() for k, v in secret.obj["data"].items()}
    assert data["RABBITMQ_MONITOR_URL"].startswith(f"amqp://chat_monitor:{data['RABBITMQ_MONITOR_PASSWORD']}@")
    assert data["RABBITMQ_WRITER_URL"].startswith(f"amqp://chat_writer:{data['RABBITMQ_WRITER_PASSWORD']}@")
    assert data["RABBITMQ_URL"].startswith(f"amqp://chat_api:{data['RABBITMQ_API_PASSWORD']}@")
    users = {u["name"]: u["tags"] for u in json.loads(data["RABBITMQ_DEFINITIONS"])["users"]}
    assert users == {"chat": ["administrator"], "chat_api": [], "chat_writer": [], "chat_monitor": ["monitoring"]}


def test_the_bundled_broker_loads_the_users_from_the_release_secret():
    manifests = render(SEED)
    (broker,) = [m for m in of_kind(manifests, "StatefulSet") if m.obj["metadata"]["name"].endswith("-rabbitmq")]
    spec = broker.obj["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "definitions"]
    assert volume["secret"]["items"] == [{"key": "RABBITMQ_DEFINITIONS", "path": "definitions.json"}]
    (config,) = [m for m in of_kind(manifests, "ConfigMap") if m.obj["metadata"]["name"].endswith("-rabbitmq-conf")]
    assert '{load_definitions, "/etc/rabbitmq/definitions/definitions.json"}' in config.obj["data"]["advanced.config"]


def test_a_broker_the_chart_does_not_run_keeps_one_url():
    for values in (EXTERNAL_URLS, {"auth": {"existingSecret": "mine"}}):
        keys = _broker_keys(render(values, api_versions=KEDA_APIS))
        assert keys["api"] == keys["chat-writer"] == "RABBITMQ_URL"
        (auth,) = of_kind(render(values, api_versions=KEDA_APIS), "TriggerAuthentication")
        assert auth.obj["spec"]["secretTargetRef"][0]["key"] == "RABBITMQ_URL"
