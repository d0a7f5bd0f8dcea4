"""The control plane itself: what the chart and operator tests rely on holds (nodes, pods, jobs, volumes, tokens)."""

from __future__ import annotations

import json

from chat_devtools.control_plane import ControlPlane, versions


def test_it_serves_the_pinned_release(control_plane: ControlPlane):
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == versions()["KUBERNETES_VERSION"]
    assert version["clientVersion"]["gitVersion"] == versions()["KUBERNETES_VERSION"]


def test_a_deployment_gets_running_pods_and_a_job_succeeds(control_plane: ControlPlane, kube_namespace: str):
    ns = kube_namespace
    control_plane.kubectl("-n", ns, "create", "deployment", "web", "--image=registry.invalid/web:1", "--replicas=2")
    control_plane.kubectl("-n", ns, "rollout", "status", "deployment/web", "--timeout=90s", timeout=120)
    pods = control_plane.get_json("pods", "-n", ns, "-l", "app=web")["items"]
    assert len(pods) == 2
    assert {p["status"]["phase"] for p in pods} == {"Running"}
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in pods)

    control_plane.kubectl("-n", ns, "create", "job", "once", "--image=registry.invalid/job:1")
    control_plane.kubectl("-n", ns, "wait", "--for=condition=complete", "job/once", "--timeout=90s", timeout=120)


def test_a_bare_pod_that_does_not_restart_completes(control_plane: ControlPlane, kube_namespace: str):
    """`helm test` pods are bare pods with restartPolicy Never: the simulated kubelet lets them succeed."""
    ns = kube_namespace
    control_plane.kubectl("-n", ns, "run", "probe", "--image=registry.invalid/curl:1", "--restart=Never")
    control_plane.kubectl(
        "-n", ns, "wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/probe", "--timeout=90s", timeout=120
    )


def test_a_claim_of_the_default_class_is_bound(control_plane: ControlPlane, kube_namespace: str):
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": kube_namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    control_plane.apply(claim)
    control_plane.kubectl(
        "-n", kube_namespace, "wait", "--for=jsonpath={.status.phase}=Bound", "pvc/data", "--timeout=60s", timeout=90
    )


def test_a_service_account_token_authenticates_with_only_its_rbac(control_plane: ControlPlane, kube_namespace: str):
    ns = kube_namespace
    control_plane.kubectl("-n", ns, "create", "serviceaccount", "reader")
    control_plane.kubectl("-n", ns, "create", "role", "read-pods", "--verb=get,list", "--resource=pods")
    control_plane.kubectl(
        "-n", ns, "create", "rolebinding", "read-pods", "--role=read-pods", f"--serviceaccount={ns}:reader"
    )
    config = control_plane.kubeconfig_for_token(control_plane.create_token(ns, "reader"), f"reader-{ns}")
    assert control_plane.kubectl("-n", ns, "get", "pods", kubeconfig=config).returncode == 0
    refused = control_plane.kubectl("-n", ns, "get", "secrets", kubeconfig=config, check=False)
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr.lower()
