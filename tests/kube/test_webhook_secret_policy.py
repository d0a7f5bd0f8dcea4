"""The operator reads a tenant's webhook signing Secret only when the tenant labelled it for that, and can change none:
the chart's ValidatingAdmissionPolicy (templates/operator/secret-policy.yaml), rendered for the control plane's
Kubernetes version and applied on the real API server, against the operator's own Secret client
(chat_operator.kube.KubeSecrets) acting as the operator's ServiceAccount (impersonated) with the chart's verbs on
Secrets (create, patch: no get)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import kubernetes
import pytest
from kubernetes import client

from chat_devtools.control_plane import ControlPlane
from chat_devtools.http import wait_for
from chat_operator.kube import SIGNING_LABEL, KubeSecrets, SigningSecretMissing
from tests.chart.rendering import of_kind, render

pytestmark = pytest.mark.kube
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(scope="module")
def operator_account(control_plane: ControlPlane) -> Iterator[tuple[str, str]]:
    """The chart's admission policy for a release in a namespace of its own, and that release's operator username."""
    release_namespace = f"rel-{uuid.uuid4().hex[:6]}"
    version = control_plane.kubectl("version", "-o", "json").stdout
    kube_version = json.loads(version)["serverVersion"]["gitVersion"]
    manifests = render(None, kube_version=kube_version, namespace=release_namespace)
    policies = of_kind(manifests, "ValidatingAdmissionPolicy") + of_kind(manifests, "ValidatingAdmissionPolicyBinding")
    assert len(policies) == 2
    for manifest in policies:
        control_plane.apply(manifest.obj)
    (condition,) = policies[0].obj["spec"]["matchConditions"]
    username = next(u for u in json.loads(condition["expression"].split(" in ", 1)[1]) if u.endswith("-operator"))
    yield username, release_namespace
    for manifest in policies:
        control_plane.kubectl("delete", manifest.kind.lower(), manifest.name, "--wait=false", check=False)


@pytest.fixture
def as_operator(control_plane: ControlPlane, kube_namespace: str, operator_account) -> KubeSecrets:
    """The operator's Secret client as its ServiceAccount, once the policy is in force (the API server loads a new
    policy asynchronously: until then the canary's change below would pass)."""
    username, _ = operator_account
    role = f"operator-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("-n", kube_namespace, "create", "role", role, "--verb=create,patch", "--resource=secrets")
    control_plane.kubectl("-n", kube_namespace, "create", "rolebinding", role, f"--role={role}", f"--user={username}")

    def api() -> client.CoreV1Api:
        api_client = kubernetes.config.new_client_from_config(str(control_plane.kubeconfig))
        api_client.set_default_header("Impersonate-User", username)
        return client.CoreV1Api(api_client)

    secrets = KubeSecrets(api)
    _secret(control_plane, kube_namespace, "canary", labelled=True)

    def refused() -> bool:
        # A new value each time: a probe let through before the policy was in force leaves its annotation, and the
        # same patch again would change nothing, which the policy admits on a labelled signing Secret (the read).
        change = {"metadata": {"annotations": {"probe": uuid.uuid4().hex}}}
        try:
            secrets.api.patch_namespaced_secret(
                "canary", kube_namespace, change, _content_type="application/merge-patch+json"
            )
        except client.exceptions.ApiException as exc:
            return exc.status == 403
        return False

    # Usually well under a second; once it took over 30 s on a busy machine.
    wait_for(refused, 180, 0.5, "the admission policy in force")
    return secrets


def _secret(control_plane: ControlPlane, namespace: str, name: str, labelled: bool) -> None:
    control_plane.kubectl("-n", namespace, "create", "secret", "generic", name, f"--from-literal=secret={SECRET}")
    if labelled:
        control_plane.kubectl("-n", namespace, "label", "secret", name, f"{SIGNING_LABEL}=true")


def test_a_labelled_signing_secret_is_read_and_nothing_else(control_plane, kube_namespace, as_operator):
    ns = kube_namespace
    _secret(control_plane, ns, "signing", labelled=True)
    _secret(control_plane, ns, "unlabelled", labelled=False)
    assert as_operator.read_signing_secret(ns, "signing", "secret") == SECRET
    with pytest.raises(SigningSecretMissing, match="not labelled"):
        as_operator.read_signing_secret(ns, "unlabelled", "secret")
    with pytest.raises(SigningSecretMissing, match="not found"):
        as_operator.read_signing_secret(ns, "absent", "secret")
    with pytest.raises(SigningSecretMissing, match="no key"):
        as_operator.read_signing_secret(ns, "signing", "other")
    username = as_operator.api.api_client.default_headers["Impersonate-User"]
    can = control_plane.kubectl("-n", ns, "auth", "can-i", "get", "secrets", f"--as={username}", check=False)
    assert can.stdout.strip() == "no"  # read by a patch that changes nothing, never by get


def test_the_operator_cannot_change_a_labelled_signing_secret(control_plane, kube_namespace, as_operator):
    ns = kube_namespace
    _secret(control_plane, ns, "signing", labelled=True)
    for patch in (
        {"data": {"secret": base64.b64encode(b"whsec_replaced").decode()}},
        {"metadata": {"labels": {"extra": "x"}}},
        {"metadata": {"annotations": {"a": "b"}}},
        {"metadata": {"finalizers": ["example.com/hold"]}},
    ):
        with pytest.raises(client.exceptions.ApiException) as refused:
            as_operator.api.patch_namespaced_secret("signing", ns, patch, _content_type="application/merge-patch+json")
        assert refused.value.status == 403, patch
    stored = control_plane.get_json("-n", ns, "secret", "signing")
    assert base64.b64decode(stored["data"]["secret"]).decode() == SECRET
    assert set(stored["metadata"].get("labels") or {}) == {SIGNING_LABEL}
