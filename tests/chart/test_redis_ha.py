"""The chart's Redis modes: standalone (default), Sentinel, Redis Cluster, and an external (managed) Redis.

The variants ``redis-sentinel`` and ``redis-cluster`` (tests/chart/conftest.py) also go through every per-variant
check of test_chart.py and test_security.py (lint, Kubernetes schemas, security contexts and resources,
credentials only in Secrets, checkov). These tests check what is particular to each mode; the URLs the chart
writes are parsed by the application's own parser (chat_common.clients.redis_client.parse_redis_url).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import helm_python as helm
import pytest
import redis

from chat_common.clients.redis_client import parse_redis_url
from chat_devtools.ports import free_port_with_bus
from tests.chart.conftest import rendered
from tests.chart.rendering import NAMESPACE, containers, of_kind, pod_specs, render
from tests.chart.test_chart import component, env_of, named

HEADLESS_DOMAIN = f"chat-chat-system-redis-headless.{NAMESPACE}.svc.cluster.local"
EXTERNAL = {"redis": {"enabled": False}}


def _secret_data(manifests) -> dict[str, str]:
    (secret,) = [s for s in of_kind(manifests, "Secret") if "REDIS_URL" in (s.obj.get("data") or {})]
    return {k: base64.b64decode(v).decode() for k, v in secret.obj["data"].items()}


def _config(manifests) -> dict[str, str]:
    return named(manifests, "ConfigMap", "config").obj["data"]


def _redis_statefulset(manifests):
    return named(manifests, "StatefulSet", "redis").obj


def _redis_pdbs(manifests):
    return [m for m in of_kind(manifests, "PodDisruptionBudget") if component(m) == "redis"]


def _pod_names(count: int) -> list[str]:
    return [f"chat-chat-system-redis-{i}.{HEADLESS_DOMAIN}" for i in range(count)]


def test_standalone_is_the_default_and_unchanged():
    manifests = rendered("default")
    sts = _redis_statefulset(manifests)
    assert sts["spec"]["replicas"] == 1
    assert "topologySpreadConstraints" not in sts["spec"]["template"]["spec"]
    assert [c["name"] for c in sts["spec"]["template"]["spec"]["containers"]] == ["redis"]
    target = parse_redis_url(_secret_data(manifests)["REDIS_URL"])
    assert target.mode == "plain"
    assert _config(manifests)["REDIS_REPLICAS_TO_ACK"] == "0"
    assert not _redis_pdbs(manifests)
    assert not [m for m in of_kind(manifests, "Job") if component(m) == "redis-cluster-init"]


def test_sentinel_mode_runs_a_sentinel_beside_each_redis_and_the_services_ask_the_sentinels():
    manifests = rendered("redis-sentinel")
    sts = _redis_statefulset(manifests)
    assert sts["spec"]["replicas"] == 3
    pod = sts["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    assert {"redis", "sentinel", "metrics"} == set(by_name)
    assert by_name["sentinel"]["command"] == ["redis-server", "/run/redis/sentinel.conf", "--sentinel"]
    assert {p["name"]: p["containerPort"] for p in by_name["sentinel"]["ports"]} == {"sentinel": 26379}
    (init,) = pod["initContainers"]
    script = init["command"][-1]
    # Configs from the headless Service's DNS names; the Sentinels resolve and announce host names.
    assert "sentinel resolve-hostnames yes" in script and "sentinel announce-hostnames yes" in script
    assert "replica-announce-ip" in script
    assert "sentinel monitor %s %s %s 2" in script  # quorum: a majority of 3
    assert "pods=3" in script and "master_name='chat'" in script
    # The pods' DNS names (tests/chart/test_redis_sentinel_scripts.py runs the scripts themselves).
    assert f"host() {{ printf '%s-%s.%s' 'chat-chat-system-redis' \"$1\" '{HEADLESS_DOMAIN}'; }}" in script
    assert "REDIS_PASSWORD" not in by_name["redis"]["command"][-1].replace("unset REDIS_PASSWORD", "")
    # A Service for the Sentinels; the headless Service publishes their port per pod.
    sentinel_svc = named(manifests, "Service", "redis-sentinel").obj
    assert [p["port"] for p in sentinel_svc["spec"]["ports"]] == [26379]
    headless = named(manifests, "Service", "redis-headless").obj
    assert {p["name"] for p in headless["spec"]["ports"]} == {"redis", "sentinel"}

    data = _secret_data(manifests)
    target = parse_redis_url(data["REDIS_URL"])
    assert target.mode == "sentinel"
    assert target.service == "chat"
    assert [h for h, _ in target.nodes] == _pod_names(3)
    assert {p for _, p in target.nodes} == {26379}
    assert target.password == data["REDIS_PASSWORD"] == target.sentinel_password
    assert _config(manifests)["REDIS_REPLICAS_TO_ACK"] == "1"


def test_sentinel_quorum_follows_the_number_of_pods():
    manifests = render({"redis": {"mode": "sentinel", "sentinel": {"replicas": 5}}})
    sts = _redis_statefulset(manifests)
    assert sts["spec"]["replicas"] == 5
    script = sts["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    assert "sentinel monitor %s %s %s 3" in script and "pods=5" in script
    assert len(parse_redis_url(_secret_data(manifests)["REDIS_URL"]).nodes) == 5


def test_cluster_mode_runs_six_cluster_nodes_announcing_their_names():
    manifests = rendered("redis-cluster")
    sts = _redis_statefulset(manifests)
    assert sts["spec"]["replicas"] == 6
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    (redis,) = sts["spec"]["template"]["spec"]["containers"]
    command = redis["command"][-1]
    for flag in (
        "--cluster-enabled yes",
        "--cluster-require-full-coverage no",
        f'--cluster-announce-hostname "$POD_NAME.{HEADLESS_DOMAIN}"',
        "--cluster-preferred-endpoint-type hostname",
        "--cluster-config-file /data/nodes.conf",
    ):
        assert flag in command
    assert {p["name"]: p["containerPort"] for p in redis["ports"]} == {"redis": 6379, "bus": 16379}
    assert env_of(redis)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The cluster keeps its node identities on the volume.
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]

    data = _secret_data(manifests)
    target = parse_redis_url(data["REDIS_URL"])
    assert target.mode == "cluster"
    assert [h for h, _ in target.nodes] == _pod_names(6)
    assert {p for _, p in target.nodes} == {6379}
    assert target.password == data["REDIS_PASSWORD"]
    assert _config(manifests)["REDIS_REPLICAS_TO_ACK"] == "1"


def test_the_hook_job_creates_the_cluster_once_and_only_in_cluster_mode():
    (job,) = [m for m in of_kind(rendered("redis-cluster"), "Job") if component(m) == "redis-cluster-init"]
    assert job.hook == "post-install,post-upgrade"
    assert "hook-succeeded" in job.obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    script = job.obj["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes" in script
    # Idempotent: a node that already has hash slots means the cluster exists.
    assert "cluster_slots_assigned" in script and "exit 0" in script
    # It waits for each of the 6 pods by its stable name before creating the cluster.
    assert "for i in $(seq 0 5)" in script
    assert f'host="chat-chat-system-redis-$i.{HEADLESS_DOMAIN}"' in script
    env = env_of(job.obj["spec"]["template"]["spec"]["containers"][0])
    assert "secretKeyRef" in env["REDISCLI_AUTH"]["valueFrom"]
    for variant in ("default", "redis-sentinel", "external-urls"):
        assert not [m for m in of_kind(rendered(variant), "Job") if component(m) == "redis-cluster-init"]


@pytest.mark.parametrize("variant", ["redis-sentinel", "redis-cluster"])
def test_ha_pods_spread_over_hosts_and_zones_and_one_may_be_down_at_a_time(variant):
    manifests = rendered(variant)
    pod = _redis_statefulset(manifests)["spec"]["template"]["spec"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    (pdb,) = _redis_pdbs(manifests)
    assert pdb.obj["spec"]["maxUnavailable"] == 1
    assert pdb.obj["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"


def test_spread_and_pdb_can_be_replaced_or_switched_off():
    custom = [{"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}]
    manifests = render({"redis": {"mode": "sentinel", "topologySpreadConstraints": custom, "pdb": {"enabled": False}}})
    assert _redis_statefulset(manifests)["spec"]["template"]["spec"]["topologySpreadConstraints"] == custom
    assert not _redis_pdbs(manifests)


@pytest.mark.parametrize(("variant", "port"), [("redis-sentinel", "sentinel"), ("redis-cluster", "bus")])
def test_ha_pods_may_reach_each_other_through_the_network_policy(variant, port):
    manifests = rendered(variant)
    policy = named(manifests, "NetworkPolicy", "redis").obj
    peers: dict[str, set[str]] = {}
    for rule in policy["spec"]["ingress"]:
        labels = [p.get("podSelector", {}).get("matchLabels", {}) for p in rule["from"]]
        components = {m["app.kubernetes.io/component"] for m in labels if "app.kubernetes.io/component" in m}
        peers.setdefault(rule["ports"][0]["port"], set()).update(components)
    assert "redis" in peers["redis"]  # replication
    assert "redis" in peers[port]
    if variant == "redis-sentinel":
        assert {"api", "chat-writer", "message-writer", "counter-cron"} <= peers["sentinel"]
    else:
        assert "redis-cluster-init" in peers["redis"]
        named(manifests, "NetworkPolicy", "redis-cluster-init")  # the Job itself admits nothing
    named_ports = {p["name"] for _, pod in pod_specs(manifests) for c in containers(pod) for p in c.get("ports", [])}
    assert port in named_ports


@pytest.mark.parametrize(
    ("url", "mode"),
    [
        ("redis://:pw@redis.db.svc:6379/0", "plain"),
        ("rediss://:pw@primary.cache.amazonaws.com:6380/0", "plain"),
        ("redis+sentinel://:pw@s1.db.svc:26379,s2.db.svc:26379/mymaster/0", "sentinel"),
        ("rediss+cluster://:pw@clustercfg.cache.amazonaws.com:6379", "cluster"),
    ],
)
def test_an_external_redis_in_any_mode_with_its_replicas_to_ack(url, mode):
    manifests = render({**EXTERNAL, "externalRedis": {"url": url, "replicasToAck": 1}})
    assert not [m for m in of_kind(manifests, "StatefulSet") if component(m) == "redis"]
    assert _secret_data(manifests)["REDIS_URL"] == url
    assert parse_redis_url(url).mode == mode
    assert _config(manifests)["REDIS_REPLICAS_TO_ACK"] == "1"


def test_external_redis_defaults_to_no_replica_acks_and_extra_config_overrides():
    manifests = render({**EXTERNAL, "externalRedis": {"url": "redis://:pw@redis.db.svc:6379/0"}})
    assert _config(manifests)["REDIS_REPLICAS_TO_ACK"] == "0"
    manifests = render({"redis": {"mode": "sentinel"}, "config": {"extra": {"REDIS_REPLICAS_TO_ACK": "2"}}})
    assert _config(manifests)["REDIS_REPLICAS_TO_ACK"] == "2"


def test_changing_the_mode_rolls_the_services():
    def checksum(values):
        deployment = named(render(values), "Deployment", "api").obj
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]

    seed = {"auth": {"passwordSeed": "s" * 32}}
    assert checksum(seed) != checksum({**seed, "redis": {"mode": "cluster"}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": {"mode": "cluster", "cluster": {"nodes": 5}}}, "nodes"),
        ({"redis": {"mode": "sentinel", "sentinel": {"replicas": 4}}}, "replicas"),
        ({"redis": {"mode": "sentinel", "sentinel": {"replicas": 1}}}, "replicas"),
        ({"redis": {"mode": "cluster", "cluster": {"replicasPerMaster": 0}}}, "replicasPerMaster"),
        ({"redis": {"mode": "replicated"}}, "mode"),
        ({**EXTERNAL, "externalRedis": {"url": "memcached://cache:11211"}}, "url"),
        ({**EXTERNAL, "externalRedis": {"url": "redis://r:6379", "replicasToAck": -1}}, "replicasToAck"),
    ],
)
def test_schema_rejects_wrong_redis_values(values, message):
    with pytest.raises(helm.HelmValuesError, match=message):
        render(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # 8 nodes with 1 replica per master: 4 groups would work, but 7 or 8 with 2 replicas cannot be split evenly.
        (
            {"redis": {"mode": "cluster", "cluster": {"nodes": 8, "replicasPerMaster": 2}}},
            "multiple of 1 \\+ replicasPerMaster",
        ),
        ({"redis": {"mode": "cluster", "cluster": {"nodes": 6, "replicasPerMaster": 2}}}, "at least 3 masters"),
        ({"redis": {"mode": "cluster", "persistence": {"enabled": False}}}, "nodes.conf"),
    ],
)
def test_cross_field_redis_problems_are_refused(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_nine_nodes_with_two_replicas_per_master_are_accepted():
    manifests = render({"redis": {"mode": "cluster", "cluster": {"nodes": 9, "replicasPerMaster": 2}}})
    assert _redis_statefulset(manifests)["spec"]["replicas"] == 9
    (job,) = [m for m in of_kind(manifests, "Job") if component(m) == "redis-cluster-init"]
    assert "--cluster-replicas 2" in job.obj["spec"]["template"]["spec"]["containers"][0]["command"][-1]


def _nodes_conf_rewrite(command: str) -> str:
    """The part of the cluster node's start script that re-resolves the addresses in nodes.conf."""
    start = command.index("if [ -f /data/nodes.conf ]")
    end = command.index("\nfi\n", start) + len("\nfi\n")
    return command[start:end]


@pytest.mark.skipif(
    shutil.which("getent") is None, reason="getent (used by the script, as in the alpine image) missing"
)
def test_a_restarted_cluster_node_points_nodes_conf_at_the_current_addresses(tmp_path: Path):
    """Run the start script's nodes.conf rewrite with sh on a nodes.conf in Redis 7's format."""
    (redis,) = _redis_statefulset(rendered("redis-cluster"))["spec"]["template"]["spec"]["containers"]
    script = _nodes_conf_rewrite(redis["command"][-1]).replace("/data/", f"{tmp_path}/")
    conf = tmp_path / "nodes.conf"
    conf.write_text(
        "a1 10.0.0.7:6379@16379,localhost myself,master - 0 0 1 connected 0-5460\n"
        "b2 10.0.0.8:6379@16379,localhost,shard-id=f00 slave a1 0 1700000000000 1 connected\n"
        "c3 10.0.0.9:6379@16379,no-such-host.invalid master - 0 1700000000000 2 connected 5461-10922\n"
        "d4 10.0.0.10:6379@16379 master - 0 1700000000000 3 connected 10923-16383\n"
        "vars currentEpoch 3 lastVoteEpoch 0\n"
    )
    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    lines = conf.read_text().splitlines()
    local = subprocess.run(["getent", "hosts", "localhost"], capture_output=True, text=True).stdout.split()[0]
    assert lines[0] == f"a1 {local}:6379@16379,localhost myself,master - 0 0 1 connected 0-5460"
    assert lines[1] == f"b2 {local}:6379@16379,localhost,shard-id=f00 slave a1 0 1700000000000 1 connected"
    # A name that does not resolve, or no name, keeps the address it had.
    assert lines[2].startswith("c3 10.0.0.9:6379@16379,no-such-host.invalid master")
    assert lines[3].startswith("d4 10.0.0.10:6379@16379 master")
    assert lines[4] == "vars currentEpoch 3 lastVoteEpoch 0"


@pytest.mark.parametrize("variant", ["redis-sentinel", "redis-cluster"])
def test_api_writers_and_count_sync_get_the_ha_url_and_replica_acks(variant):
    manifests = rendered(variant)
    config = named(manifests, "ConfigMap", "config")
    assert config.obj["data"]["REDIS_REPLICAS_TO_ACK"] == "1"
    secret_name = next(s.name for s in of_kind(manifests, "Secret") if "REDIS_URL" in (s.obj.get("data") or {}))
    workloads = [named(manifests, "Deployment", name) for name in ("api", "chat-writer", "message-writer")]
    workloads.append(named(manifests, "CronJob", "counter-cron"))
    for m, pod in pod_specs(workloads):
        (main,) = pod["containers"]
        env = env_of(main)
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": secret_name, "key": "REDIS_URL"}, m
        assert "REDIS_REPLICAS_TO_ACK" not in env, m  # from the ConfigMap
        assert {"configMapRef": {"name": config.name}} in main["envFrom"], m


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed on this machine")
def test_a_cluster_node_starts_from_the_container_command(tmp_path: Path):
    """Run the cluster node's start script with sh (paths and port moved to private ones): redis-server accepts
    the flags, runs cluster-enabled, announces the pod's DNS name and requires the password."""
    (node,) = _redis_statefulset(rendered("redis-cluster"))["spec"]["template"]["spec"]["containers"]
    port = free_port_with_bus()  # the cluster bus listens on port + 10000
    script = node["command"][-1].replace("/data", str(tmp_path)).replace("/run/redis/", f"{tmp_path}/")
    script = script.replace(
        "--cluster-preferred-endpoint-type hostname",
        f"--cluster-preferred-endpoint-type hostname --port {port} --save ''",
    )
    env = {"PATH": os.environ["PATH"], "POD_NAME": "chat-chat-system-redis-3", "REDIS_PASSWORD": "pw-0123"}
    process = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, password="pw-0123", socket_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                info = client.info("cluster")
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and process.poll() is None, "the node did not start"
                time.sleep(0.2)
        assert info["cluster_enabled"] == 1
        assert client.config_get("cluster-announce-hostname") == {
            "cluster-announce-hostname": f"chat-chat-system-redis-3.{HEADLESS_DOMAIN}"
        }
        assert client.config_get("cluster-require-full-coverage") == {"cluster-require-full-coverage": "no"}
        assert client.config_get("masterauth")["masterauth"] == "pw-0123"
        assert (tmp_path / "nodes.conf").exists()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
    finally:
        process.kill()
        process.wait()
