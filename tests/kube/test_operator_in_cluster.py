"""The operator as it runs in a cluster: the chart's Deployment, the chart's ServiceAccount and RBAC, for real.

The chart is installed on the loopback control plane with the operator's pods sent to a :class:`ProcessNode`, whose
kubelet runs them as real processes with a TokenRequest token of the chart's ServiceAccount mounted where a pod has
it — so what the operator may do is exactly what the chart's RBAC grants. The operator reaches the real MariaDB and
Redis of a test namespace (the chart's `auth.existingSecret` holds their loopback URLs); an API process of the same
namespace answers the REST side of each round trip. Everything else of the release runs on kwok's nodes.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes.config
import pytest
from kubernetes import client
from sqlalchemy import text

from chat_common.clients.db import make_engine
from chat_devtools.control_plane import ControlPlane
from chat_devtools.http import Api, wait_for
from chat_devtools.namespace import Namespace
from chat_devtools.process_node import ProcessNode
from chat_devtools.processes import System
from chat_operator.kube import ForeignSecret, KubeSecrets
from tests.conftest import LOG_ROOT

pytestmark = [
    pytest.mark.kube,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the process node mounts each pod's files in a mount namespace: root"),
]

CHART = Path(__file__).resolve().parents[2] / "helm" / "chat-system"
RELEASE = "chat"
OPERATOR = "app.kubernetes.io/component=operator"


@dataclass
class Release:
    """One installed release whose operator runs for real, and the API of the same data."""

    plane: ControlPlane
    node: ProcessNode
    namespace: str
    data: Namespace
    api: Api
    values_file: Path

    def kubectl(self, *args: str, **kwargs):
        return self.plane.kubectl("-n", self.namespace, *args, **kwargs)

    def get(self, kind: str, name: str) -> dict | None:
        result = self.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def apply_application(self, resource: str, **spec: object) -> None:
        body = {"apiVersion": "chat-system.io/v1", "kind": "Application",
                "metadata": {"name": resource, "namespace": self.namespace}, "spec": spec}  # fmt: skip
        self.kubectl("apply", "-f", "-", stdin=json.dumps(body))

    def patch_spec(self, name: str, spec: dict, check: bool = True):
        return self.kubectl("patch", "application", name, "--type=merge", "-p", json.dumps({"spec": spec}), check=check)

    def secret(self, name: str, timeout: float = 90) -> dict[str, str]:
        found = wait_for(lambda: self.get("secret", f"{name}-chat-token"), timeout, 0.5, f"Secret {name}-chat-token")
        return {k: base64.b64decode(v).decode() for k, v in found["data"].items()}

    def status(self, name: str, predicate, what: str, timeout: float = 90) -> dict:
        def probe():
            obj = self.get("application", name)
            return obj if obj and predicate(obj.get("status") or {}) else None

        return wait_for(probe, timeout, 0.5, what)

    def events(self, name: str) -> set[str]:
        listed = self.plane.get_json("events", "-n", self.namespace, f"--field-selector=involvedObject.name={name}")
        return {e["reason"] for e in listed["items"]}

    def operator_pods(self) -> list[dict]:
        pods = self.plane.get_json("pods", "-n", self.namespace, "-l", OPERATOR)["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def tenants(self, name: str) -> int:
        engine = make_engine(self.data.settings.database_url, pool_size=1)
        try:
            with engine.connect() as conn:
                return conn.execute(text("SELECT COUNT(*) FROM applications WHERE name = :n"), {"n": name}).scalar()
        finally:
            engine.dispose()


# What the release's existingSecret holds: the test namespace's connections, and its TOKEN_SEALING_KEY — the API
# process's own, so the operator unseals the tokens the API sealed (and the other way round).
CONNECTION_KEYS = ("DATABASE_URL", "REDIS_URL", "RABBITMQ_URL", "TOKEN_SEALING_KEY", "WEBHOOK_SEALING_KEY")


def release_values(node: ProcessNode, data: Namespace, uninstall: str = "delete") -> dict:
    s = data.settings
    return {
        "auth": {"existingSecret": "loopback-connections"},
        "mariadb": {"enabled": False},
        "redis": {"enabled": False},
        "rabbitmq": {"enabled": False},
        "elasticsearch": {"enabled": False},
        "keda": "false",
        "monitoring": "false",
        "networkPolicy": {"enabled": False},
        "config": {
            "redisKeyPrefix": s.redis_key_prefix,
            "queuePrefix": s.queue_prefix,
            "searchIndex": s.search_index,
            "queueType": s.queue_type,
        },
        "operator": {
            "replicaCount": 1,  # test_two_replicas_... scales it to the default's two
            "nodeSelector": node.node_selector,
            "tolerations": node.tolerations,
            # Counts and the previous token's expiry reach the status on this refresh.
            "extraEnv": [{"name": "STATUS_REFRESH_SECONDS", "value": "5"}],
            "uninstall": {"applications": uninstall, "timeoutSeconds": 120},
        },
    }


@pytest.fixture(scope="module")
def release(control_plane: ControlPlane) -> Iterator[Release]:
    data = Namespace.create("kop")
    system = System(data, LOG_ROOT / data.name, api_workers=1).start()
    node = ProcessNode(control_plane, f"process-{uuid.uuid4().hex[:4]}").start()
    namespace = f"op-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", namespace)
    env = data.environ()
    control_plane.kubectl(
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        "loopback-connections",
        *(f"--from-literal={k}={env[k]}" for k in CONNECTION_KEYS),
        f"--from-literal=ADMIN_API_KEY={data.settings.admin_api_key or 'admin-key-' + 'x' * 32}",
    )
    values_file = control_plane.workdir / f"operator-values-{namespace}.json"
    values_file.write_text(json.dumps(release_values(node, data)))
    control_plane.helm("install", RELEASE, str(CHART), "-n", namespace, "-f", str(values_file), "--wait",
                       "--timeout", "5m", timeout=400)  # fmt: skip
    released = Release(control_plane, node, namespace, data, Api(system.base_url, data.settings.admin_api_key),
                       values_file)  # fmt: skip
    wait_for(lambda: len(released.operator_pods()) == 1 and node.pods, 60, 0.5, "the operator running on the node")
    yield released
    control_plane.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "3m", timeout=300, check=False)
    node.stop()
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    system.stop()
    data.destroy()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_the_operator_runs_as_the_charts_service_account(release: Release):
    pod = release.operator_pods()[0]
    account = pod["spec"]["serviceAccountName"]
    assert account != "default"
    can = release.plane.kubectl(
        "auth",
        "can-i",
        "list",
        "secrets",
        "-n",
        "kube-system",
        f"--as=system:serviceaccount:{release.namespace}:{account}",
        check=False,
    )
    assert can.stdout.strip() == "no", "the operator's RBAC reaches only the namespaces it serves"


def test_the_operator_reads_and_writes_only_its_own_secrets(release: Release):
    """No get on Secrets, and the chart's admission policy refuses its patches of a Secret it did not make: what it
    cannot patch it cannot read (a patch answers the object). Checked with the operator's own Secret client
    (chat_operator.kube.KubeSecrets) as its ServiceAccount. An Application named after a foreign Secret is a
    SecretConflict, not a takeover."""
    account = release.operator_pods()[0]["spec"]["serviceAccountName"]
    username = f"system:serviceaccount:{release.namespace}:{account}"
    can = release.kubectl("auth", "can-i", "get", "secrets", f"--as={username}", check=False)
    assert can.stdout.strip() == "no"

    def as_operator() -> client.CoreV1Api:
        api_client = kubernetes.config.new_client_from_config(str(release.plane.kubeconfig))
        api_client.set_default_header("Impersonate-User", username)
        return client.CoreV1Api(api_client)

    secrets = KubeSecrets(as_operator)
    foreign = unique("foreign")
    release.kubectl("create", "secret", "generic", f"{foreign}-chat-token", "--from-literal=password=not-the-operators")
    with pytest.raises(ForeignSecret):
        secrets.read(release.namespace, f"{foreign}-chat-token")
    assert secrets.read(release.namespace, f"{unique('missing')}-chat-token") is None

    release.apply_application(foreign, name="Would take the Secret over", deletionPolicy="Delete")
    release.status(foreign, lambda s: "does not belong" in json.dumps(s.get("conditions", [])), "SecretConflict")
    assert release.get("secret", f"{foreign}-chat-token")["data"] == {
        "password": base64.b64encode(b"not-the-operators").decode()
    }

    own = unique("own")
    release.apply_application(own, name="Own", deletionPolicy="Delete")
    token = release.secret(own)["token"]
    stored = secrets.read(release.namespace, f"{own}-chat-token")
    assert base64.b64decode(stored["data"]["token"]).decode() == token


def test_an_application_becomes_a_tenant_with_secret_status_conditions_and_events(release: Release):
    name = unique("made")
    release.apply_application(name, name="Made by kubectl", deletionPolicy="Delete")
    secret = release.secret(name)
    token = secret["token"]
    assert secret["apiUrl"].startswith("http")
    assert release.api.get(f"/applications/{token}").json()["name"] == "Made by kubectl"
    obj = release.status(name, lambda s: s.get("phase") == "Ready", "phase Ready")
    conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert obj["status"]["secretName"] == f"{name}-chat-token"
    assert {"Created", "SecretWritten"} <= release.events(name)
    assert release.get("secret", f"{name}-chat-token")["metadata"]["ownerReferences"][0]["name"] == name


def _condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_webhooks_from_the_spec_read_their_labelled_secret_under_the_charts_policy(release: Release):
    """spec.webhooks end to end: the operator, with the chart's RBAC and admission policy, reads the signing Secret
    its tenant labelled (no get: an empty patch the policy admits on that label), registers the endpoint and reports
    it; a Secret without the label is refused by the policy and reported as SecretMissing."""
    name = unique("hooked")
    signing = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    release.kubectl("create", "secret", "generic", f"{name}-signing", f"--from-literal=secret={signing}")
    release.kubectl("label", "secret", f"{name}-signing", "chat-system.io/webhook-secret=true")
    hook = {"name": "orders", "url": "https://receiver.invalid/chat", "secretRef": {"name": f"{name}-signing"}}
    release.apply_application(name, name="Hooked", deletionPolicy="Delete", webhooks=[hook])
    obj = release.status(
        name, lambda s: _condition(s, "WebhooksHealthy").get("status") == "True", "WebhooksHealthy True"
    )
    assert [(w["name"], w["state"]) for w in obj["status"]["webhooks"]] == [("orders", "healthy")]
    token = release.secret(name)["token"]
    listed = release.api.get(f"/applications/{token}/webhooks").json()["webhooks"]
    assert [(w["id"], w["managed_by"]) for w in listed] == [("orders", "k8s")]
    assert "WebhooksSynced" in release.events(name)
    assert release.get("secret", f"{name}-signing")["metadata"].get("ownerReferences") is None  # untouched

    release.kubectl("create", "secret", "generic", f"{name}-plain", f"--from-literal=secret={signing}")
    plain = {"name": "plain", "url": "https://receiver.invalid/other", "secretRef": {"name": f"{name}-plain"}}
    release.patch_spec(name, {"webhooks": [hook, plain]})
    obj = release.status(
        name, lambda s: _condition(s, "WebhooksHealthy").get("reason") == "SecretMissing", "SecretMissing"
    )
    assert "not labelled" in _condition(obj["status"], "WebhooksHealthy")["message"]
    assert {w["name"]: w["state"] for w in obj["status"]["webhooks"]} == {"orders": "healthy", "plain": "pending"}


def test_suspend_rotate_and_limits_round_trip_with_the_rest_api(release: Release):
    name = unique("managed")
    release.apply_application(name, name="Managed", deletionPolicy="Delete", previousTokenGraceSeconds=20)
    old = release.secret(name)["token"]
    chat = release.api.new_chat(old)

    release.patch_spec(name, {"suspended": True})
    wait_for(lambda: release.api.get(f"/applications/{old}/chats").status_code == 403, 60, 0.5, "403 when suspended")
    release.status(name, lambda s: s.get("state") == "Suspended", "state Suspended")
    release.patch_spec(name, {"suspended": False})
    wait_for(lambda: release.api.get(f"/applications/{old}/chats").status_code == 200, 60, 0.5, "200 when resumed")

    release.patch_spec(name, {"limits": {"maxChats": chat + 1}})
    wait_for(lambda: release.api.get(f"/applications/{old}/limits").json().get("max_chats") == chat + 1,
             60, 0.5, "limits reach the API")  # fmt: skip
    time.sleep(2.5)  # the API process's tenant directory may serve the former limits for TENANT_CACHE_SECONDS (2)
    assert release.api.new_chat(old) == chat + 1
    assert release.api.post(f"/applications/{old}/chats", json={"name": "one too many"}).status_code in (409, 422)

    release.patch_spec(name, {"rotateToken": 1})
    secret = wait_for(lambda: (s := release.secret(name)).get("previousToken") == old and s, 60, 0.5, "rotation")
    new = secret["token"]
    assert new != old
    assert release.api.get(f"/applications/{new}/chats").status_code == 200
    wait_for(lambda: release.api.get(f"/applications/{old}/chats").status_code == 404, 90, 1, "old token expires")
    wait_for(lambda: "previousToken" not in release.secret(name), 90, 1, "the Secret forgets the old token")


def test_a_hand_deleted_secret_is_restored(release: Release):
    name = unique("restored")
    release.apply_application(name, name="Restored", deletionPolicy="Delete")
    token = release.secret(name)["token"]
    release.kubectl("delete", "secret", f"{name}-chat-token")
    assert wait_for(lambda: release.secret(name)["token"] == token, 90, 1, "Secret restored")
    assert "SecretRestored" in release.events(name)


def test_deletion_follows_each_deletion_policy_through_the_finalizer(release: Release):
    gone, kept = unique("gone"), unique("kept")
    release.apply_application(gone, name="Deleted with its data", deletionPolicy="Delete")
    release.apply_application(kept, name="Kept after deletion", deletionPolicy="Retain")
    gone_token, kept_token = release.secret(gone)["token"], release.secret(kept)["token"]
    for name in (gone, kept):
        assert "chat-system.io/application-cleanup" in release.get("application", name)["metadata"]["finalizers"]
        release.kubectl("delete", "application", name, "--wait=true", "--timeout=120s", timeout=150)
    assert release.api.get(f"/applications/{gone_token}").status_code == 404
    assert release.api.get(f"/applications/{kept_token}").status_code == 200
    retained = release.get("secret", f"{kept}-chat-token")
    assert retained is not None and not retained["metadata"].get("ownerReferences")
    release.api.request("DELETE", f"/applications/{kept_token}")


def test_an_operator_killed_mid_reconcile_finishes_the_work_once(release: Release):
    pod = release.operator_pods()[0]["metadata"]["name"]
    names = [unique("crash") for _ in range(5)]
    for name in names:
        release.apply_application(name, name=name, deletionPolicy="Delete")
    release.node.kill(release.namespace, pod)  # SIGKILL while it works through them; the node restarts it
    for name in names:
        release.status(name, lambda s: s.get("phase") == "Ready", f"{name} Ready after the restart", timeout=120)
        assert release.tenants(name) == 1, "a reconcile cut short created no second tenant"
    assert release.get("pod", pod)["status"]["containerStatuses"][0]["restartCount"] >= 1
    for name in names:
        release.kubectl("delete", "application", name, "--wait=false")


def test_two_replicas_one_active_the_other_takes_over(release: Release):
    release.kubectl("scale", "deployment", "-l", OPERATOR, "--replicas=2")
    try:
        wait_for(lambda: len([p for p in release.operator_pods() if p["status"].get("phase") == "Running"]) == 2,
                 60, 0.5, "two operator replicas")  # fmt: skip
        first = unique("peer")
        release.apply_application(first, name="Served by one replica", deletionPolicy="Delete")
        release.status(first, lambda s: s.get("phase") == "Ready", "Ready with two replicas")
        assert release.tenants("Served by one replica") == 1
        # Delete whichever replica leads; the other must serve the next Application.
        for pod in release.operator_pods():
            release.kubectl("delete", "pod", pod["metadata"]["name"], "--wait=false")
            break
        second = unique("peer")
        release.apply_application(second, name="Served after a takeover", deletionPolicy="Delete")
        release.status(second, lambda s: s.get("phase") == "Ready", "Ready after the takeover", timeout=120)
        assert release.tenants("Served after a takeover") == 1
    finally:
        release.kubectl("scale", "deployment", "-l", OPERATOR, "--replicas=1")


@pytest.mark.parametrize("mode", ["delete", "orphan"])
def test_helm_uninstall_runs_the_hook_for_real_in_each_mode(control_plane: ControlPlane, mode: str):
    """`helm uninstall` with Applications of both deletion policies: the pre-delete hook runs as a real process
    under its own ServiceAccount while the operator still runs. delete: each is finalized by its policy (Delete
    takes the tenant, Retain keeps it); orphan: the objects, their Secrets and the tenants stay, without the
    operator's finalizer — and the operator, still running until helm removes it, does not put it back."""
    data = Namespace.create("kun")
    system = System(data, LOG_ROOT / data.name, api_workers=1).start()
    node = ProcessNode(control_plane, f"process-{uuid.uuid4().hex[:4]}").start()
    namespace = f"un-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", namespace)
    try:
        env = data.environ()
        control_plane.kubectl(
            "-n", namespace, "create", "secret", "generic", "loopback-connections",
            *(f"--from-literal={k}={env[k]}" for k in CONNECTION_KEYS),
            f"--from-literal=ADMIN_API_KEY={'admin-key-' + 'x' * 32}",
        )  # fmt: skip
        values_file = control_plane.workdir / f"uninstall-values-{namespace}.json"
        values_file.write_text(json.dumps(release_values(node, data, uninstall=mode)))
        control_plane.helm("install", RELEASE, str(CHART), "-n", namespace, "-f", str(values_file), "--wait",
                           "--timeout", "5m", timeout=400)  # fmt: skip
        release = Release(control_plane, node, namespace, data, Api(system.base_url), values_file)
        dropped, kept = unique("dropped"), unique("kept")
        release.apply_application(dropped, name="Dropped on uninstall", deletionPolicy="Delete")
        release.apply_application(kept, name="Kept on uninstall", deletionPolicy="Retain")
        tokens = {name: release.secret(name)["token"] for name in (dropped, kept)}
        for name in tokens:
            release.status(name, lambda s: s.get("phase") == "Ready", f"{name} Ready")

        control_plane.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "4m", timeout=300)
        hook_logs = list(node.logs.glob(f"{namespace}_*cleanup*.log"))
        assert hook_logs, "the pre-delete hook ran on the process node"
        api = release.api
        if mode == "delete":
            assert release.get("application", dropped) is None and release.get("application", kept) is None
            assert api.get(f"/applications/{tokens[dropped]}").status_code == 404
            assert api.get(f"/applications/{tokens[kept]}").status_code == 200
        else:
            time.sleep(3)  # long enough for a still-running operator to have put a finalizer back
            for name, token in tokens.items():
                obj = release.get("application", name)
                assert obj is not None, f"{name}: orphan keeps the object"
                assert "chat-system.io/application-cleanup" not in (obj["metadata"].get("finalizers") or [])
                assert api.get(f"/applications/{token}").status_code == 200
                assert release.get("secret", f"{name}-chat-token") is not None
            for name in tokens:  # without the operator nothing finalizes them: they go at once
                release.kubectl("delete", "application", name, "--wait=true", "--timeout=30s", timeout=60)
    finally:
        control_plane.helm("uninstall", RELEASE, "-n", namespace, "--no-hooks", check=False, timeout=120)
        node.stop()
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        system.stop()
        data.destroy()
