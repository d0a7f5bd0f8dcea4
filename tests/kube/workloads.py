"""What a test asks of an installed release: every workload has its pods, and every pod could start for real.

kwok makes a scheduled pod Running without looking inside it; a kubelet would first resolve what the pod refers to
and refuse to start a container whose Secret key, ConfigMap or claim is missing (``CreateContainerConfigError``).
:func:`unstartable_pods` does those checks against the server, so a chart that references a key its Secret lacks
fails here as it would on a real node.
"""

from __future__ import annotations

from chat_devtools.control_plane import ControlPlane


def _pod_refs(spec: dict) -> tuple[set[tuple[str, str | None]], set[tuple[str, str | None]], set[str], set[str]]:
    """(secret, key) and (configmap, key) pairs a pod needs (key None: the whole object), its claims, its account."""
    secrets: set[tuple[str, str | None]] = set()
    configmaps: set[tuple[str, str | None]] = set()
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for source in container.get("envFrom", []):
            if (ref := source.get("secretRef")) and not ref.get("optional"):
                secrets.add((ref["name"], None))
            if (ref := source.get("configMapRef")) and not ref.get("optional"):
                configmaps.add((ref["name"], None))
        for var in container.get("env", []):
            value_from = var.get("valueFrom", {})
            if (ref := value_from.get("secretKeyRef")) and not ref.get("optional"):
                secrets.add((ref["name"], ref["key"]))
            if (ref := value_from.get("configMapKeyRef")) and not ref.get("optional"):
                configmaps.add((ref["name"], ref["key"]))
    claims = set()
    for volume in spec.get("volumes", []):
        if (ref := volume.get("secret")) and not ref.get("optional"):
            secrets.add((ref["secretName"], None))
        if (ref := volume.get("configMap")) and not ref.get("optional"):
            configmaps.add((ref["name"], None))
        for source in volume.get("projected", {}).get("sources", []):
            if (ref := source.get("secret")) and not ref.get("optional"):
                secrets.add((ref["name"], None))
            if (ref := source.get("configMap")) and not ref.get("optional") and ref["name"] != "kube-root-ca.crt":
                configmaps.add((ref["name"], None))
        if claim := volume.get("persistentVolumeClaim"):
            claims.add(claim["claimName"])
    return secrets, configmaps, claims, {spec.get("serviceAccountName", "default")}


def unstartable_pods(plane: ControlPlane, namespace: str) -> list[str]:
    """Why each pod of the namespace could not start on a real node (empty: all could)."""
    objects = {
        kind: {o["metadata"]["name"]: o for o in plane.get_json(kind, "-n", namespace)["items"]}
        for kind in ("secrets", "configmaps", "pvc", "serviceaccounts", "pods")
    }
    problems = []
    for name, pod in objects["pods"].items():
        secrets, configmaps, claims, accounts = _pod_refs(pod["spec"])
        for kind, refs in (("secrets", secrets), ("configmaps", configmaps)):
            for ref, key in refs:
                obj = objects[kind].get(ref)
                if obj is None:
                    problems.append(f"pod {name}: {kind[:-1]} {ref} does not exist")
                elif key is not None and key not in (obj.get("data") or {}) | (obj.get("stringData") or {}):
                    problems.append(f"pod {name}: {kind[:-1]} {ref} has no key {key}")
        for claim in claims:
            if objects["pvc"].get(claim, {}).get("status", {}).get("phase") != "Bound":
                problems.append(f"pod {name}: claim {claim} is not bound")
        problems += [
            f"pod {name}: service account {a} does not exist" for a in accounts - set(objects["serviceaccounts"])
        ]
    return problems


def workload_problems(plane: ControlPlane, namespace: str) -> list[str]:
    """Workloads whose pods are not all there and Ready, Jobs not complete, pods neither Running nor Succeeded."""
    problems = []
    for kind in ("deployments", "statefulsets"):
        for obj in plane.get_json(kind, "-n", namespace)["items"]:
            wanted = obj["spec"].get("replicas", 1)
            ready = obj.get("status", {}).get("readyReplicas", 0)
            if ready != wanted:
                problems.append(f"{kind[:-1]} {obj['metadata']['name']}: {ready}/{wanted} ready")
    for job in plane.get_json("jobs", "-n", namespace)["items"]:
        if not job.get("status", {}).get("succeeded"):
            problems.append(f"job {job['metadata']['name']}: not complete ({job.get('status')})")
    for pod in plane.get_json("pods", "-n", namespace)["items"]:
        phase = pod.get("status", {}).get("phase")
        if phase not in ("Running", "Succeeded"):
            problems.append(f"pod {pod['metadata']['name']}: {phase} ({pod.get('status', {}).get('conditions')})")
    return problems


def settled(plane: ControlPlane, namespace: str, timeout: float = 180) -> None:
    """Wait until the namespace's workloads have their pods, then check that each pod could start for real."""
    plane.wait_for(f"workloads of {namespace}", lambda: not workload_problems(plane, namespace) or None, timeout)
    assert unstartable_pods(plane, namespace) == []
