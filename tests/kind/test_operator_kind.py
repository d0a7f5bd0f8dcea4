"""End to end on a kind cluster with the chart installed: Application resources through kubectl, tokens through the
ingress. Part of `make e2e`; skipped unless ``KIND_E2E=1`` and a cluster answers.

Environment: ``API_BASE_URL`` (the API through the ingress, e.g. http://chat.127.0.0.1.nip.io), ``E2E_NAMESPACE``
(a namespace the operator watches; default ``chat-e2e``, created if missing), ``ADMIN_API_KEY`` (if the API has
one), ``E2E_COUNTS_TIMEOUT`` (seconds to wait for counts: a count-sync run plus a status refresh; default 300).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid

import pytest

from chat_devtools.http import Api, wait_for


def _cluster_reachable() -> bool:
    if not shutil.which("kubectl"):
        return False
    probe = subprocess.run(["kubectl", "get", "crd", "applications.chat-system.io"], capture_output=True, timeout=20)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.skipif(
        os.environ.get("KIND_E2E") != "1",
        reason="needs a kind cluster with the chart installed (set KIND_E2E=1 and API_BASE_URL; `make e2e`)",
    ),
    pytest.mark.slow,
]

NAMESPACE = os.environ.get("E2E_NAMESPACE", "chat-e2e")
COUNTS_TIMEOUT = float(os.environ.get("E2E_COUNTS_TIMEOUT", "300"))


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result


def get_json(kind: str, name: str) -> dict | None:
    result = kubectl("-n", NAMESPACE, "get", kind, name, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def apply_application(name: str, **spec: object) -> None:
    body = {
        "apiVersion": "chat-system.io/v1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }
    kubectl("apply", "-f", "-", input=json.dumps(body))


def wait_secret(name: str, timeout: float = 120) -> dict[str, str]:
    secret = wait_for(lambda: get_json("secret", f"{name}-chat-token"), timeout, 1, f"Secret {name}-chat-token")
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def wait_status(name: str, predicate, what: str, timeout: float = 120) -> dict:
    def probe():
        obj = get_json("application", name)
        return obj if obj and predicate(obj.get("status") or {}) else None

    return wait_for(probe, timeout, 1, what)


@pytest.fixture(scope="module")
def api() -> Api:
    if not _cluster_reachable():
        pytest.fail("KIND_E2E=1 but kubectl cannot see the applications.chat-system.io CRD")
    base_url = os.environ.get("API_BASE_URL")
    if not base_url:
        pytest.fail("KIND_E2E=1 needs API_BASE_URL (the API through the ingress)")
    if kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        kubectl("create", "namespace", NAMESPACE)
    return Api(base_url, os.environ.get("ADMIN_API_KEY"))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_an_application_resource_becomes_a_working_tenant(api):
    name = unique("e2e-delete")
    apply_application(name, name="E2E tenant", deletionPolicy="Delete")
    secret = wait_secret(name)
    token = secret["token"]
    assert secret["apiUrl"].startswith("http")
    assert api.get(f"/applications/{token}").json()["name"] == "E2E tenant"
    obj = wait_status(name, lambda s: s.get("phase") == "Ready", "phase Ready")
    assert obj["status"]["secretName"] == f"{name}-chat-token"
    table = kubectl("-n", NAMESPACE, "get", "capp", name).stdout
    assert "DISPLAY NAME" in table and "E2E tenant" in table

    # Counts reach `kubectl get applications` after a count sync and a status refresh.
    chat = api.new_chat(token)
    api.new_message(token, chat)
    api.new_message(token, chat)
    wait_status(
        name,
        lambda s: s.get("chatsCount") == 1 and s.get("messagesCount") == 2,
        "counts in status",
        timeout=COUNTS_TIMEOUT,
    )

    # Rename through the resource.
    kubectl("-n", NAMESPACE, "patch", "application", name, "--type=merge", "-p", '{"spec":{"name":"Renamed"}}')
    wait_for(lambda: api.get(f"/applications/{token}").json()["name"] == "Renamed", 60, 1, "rename")

    # Invalid changes are refused by the API server (schema and CEL rules), not retried by the operator.
    bad_name = kubectl("-n", NAMESPACE, "patch", "application", name, "--type=merge", "-p",
                       '{"spec":{"name":"   "}}', check=False)  # fmt: skip
    assert bad_name.returncode != 0
    adopt_later = kubectl("-n", NAMESPACE, "patch", "application", name, "--type=merge", "-p",
                          '{"spec":{"existingToken":"abc"}}', check=False)  # fmt: skip
    assert adopt_later.returncode != 0 and "existingToken" in adopt_later.stderr

    # deletionPolicy: Delete takes the data and the Secret with it.
    kubectl("-n", NAMESPACE, "delete", "application", name, "--wait=true", "--timeout=180s")
    assert api.get(f"/applications/{token}").status_code == 404
    wait_for(lambda: get_json("secret", f"{name}-chat-token") is None, 60, 1, "Secret garbage-collected")


def test_retain_keeps_the_tenant_and_its_secret_and_it_can_be_adopted_again(api):
    name = unique("e2e-retain")
    apply_application(name, name="Kept tenant")
    token = wait_secret(name)["token"]
    chat = api.new_chat(token)
    kubectl("-n", NAMESPACE, "delete", "application", name, "--wait=true", "--timeout=120s")

    assert api.get(f"/applications/{token}").status_code == 200
    assert api.wait_chat(token, chat)
    secret = get_json("secret", f"{name}-chat-token")
    assert secret is not None and not secret["metadata"].get("ownerReferences")

    apply_application(name, name="Kept tenant, managed again", existingToken=token, deletionPolicy="Delete")
    wait_status(name, lambda s: s.get("phase") == "Ready", "re-adopted")
    assert wait_secret(name)["token"] == token
    kubectl("-n", NAMESPACE, "delete", "application", name, "--wait=true", "--timeout=180s")
    assert api.get(f"/applications/{token}").status_code == 404


def test_adopting_an_application_created_through_the_rest_api(api):
    created = api.post("/applications", json={"name": "made over REST"})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    name = unique("e2e-adopt")
    apply_application(name, name="Adopted over kubectl", existingToken=token)
    assert wait_secret(name)["token"] == token
    wait_for(lambda: api.get(f"/applications/{token}").json()["name"] == "Adopted over kubectl", 60, 1, "adopted")
    kubectl("-n", NAMESPACE, "delete", "application", name, "--wait=true", "--timeout=120s")
    # Retain (the default): the application stays; clean it up through the API.
    assert api.request("DELETE", f"/applications/{token}").status_code == 204
    kubectl("-n", NAMESPACE, "delete", "secret", f"{name}-chat-token", "--ignore-not-found")


def test_suspend_resume_and_rotate_through_the_resource(api):
    name = unique("e2e-manage")
    apply_application(name, name="Managed over kubectl", deletionPolicy="Delete", previousTokenGraceSeconds=30)
    old = wait_secret(name)["token"]
    chat = api.new_chat(old)

    # Suspend: 403 within the API's tenant cache bound, state and condition in the status, State column.
    kubectl("-n", NAMESPACE, "patch", "application", name, "--type=merge", "-p", '{"spec":{"suspended":true}}')
    wait_for(lambda: api.get(f"/applications/{old}/chats").status_code == 403, 60, 0.5, "403 after suspension")
    assert api.get(f"/applications/{old}/chats").json() == {"error": "application suspended"}
    obj = wait_status(name, lambda s: s.get("state") == "Suspended", "state Suspended")
    assert {c["type"]: c["status"] for c in obj["status"]["conditions"]}["Suspended"] == "True"
    assert "Suspended" in kubectl("-n", NAMESPACE, "get", "capp", name).stdout
    kubectl("-n", NAMESPACE, "patch", "application", name, "--type=merge", "-p", '{"spec":{"suspended":false}}')
    wait_for(lambda: api.get(f"/applications/{old}/chats").status_code == 200, 60, 0.5, "200 after resume")

    # Rotate: the Secret carries both tokens; both number into one sequence during the grace period.
    kubectl("-n", NAMESPACE, "patch", "application", name, "--type=merge", "-p", '{"spec":{"rotateToken":1}}')

    def rotated_secret() -> dict | None:
        secret = wait_secret(name)
        return secret if secret.get("previousToken") == old else None

    secret = wait_for(rotated_secret, 120, 1, "rotated Secret")
    new = secret["token"]
    assert new != old and secret["previousTokenExpiresAt"]
    wait_status(name, lambda s: s.get("tokenGeneration") == 1, "tokenGeneration 1")
    assert api.new_chat(new) == chat + 1
    assert api.new_chat(old) == chat + 2
    lowered = kubectl("-n", NAMESPACE, "patch", "application", name, "--type=merge", "-p",
                      '{"spec":{"rotateToken":0}}', check=False)  # fmt: skip
    assert lowered.returncode != 0 and "rotateToken" in lowered.stderr

    # After the grace period the old token is gone and the Secret forgets it (next status refresh).
    wait_for(lambda: api.get(f"/applications/{old}/chats").status_code == 404, 120, 1, "old token 404")
    wait_for(lambda: "previousToken" not in wait_secret(name), 180, 2, "previousToken removed")
    assert api.get(f"/applications/{new}/chats").status_code == 200
    kubectl("-n", NAMESPACE, "delete", "application", name, "--wait=true", "--timeout=180s")
