"""Issue #12: what would break a real deploy or a second install, and what users of well-kept charts expect.

Each test names the point of the issue it guards; each fails on the chart as it was before the fix.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shlex

import helm_python as helm
import jsonschema
import pytest
import yaml

from tests.chart.conftest import rendered
from tests.chart.rendering import (
    CHART_DIR,
    KEDA_APIS,
    KIND_CLUSTER_APIS,
    NAMESPACE,
    PROMETHEUS_OPERATOR_APIS,
    ROOT,
    Manifest,
    containers,
    load_values_file,
    of_kind,
    pod_labels,
    pod_specs,
    render,
)

KIND_VALUES = load_values_file(ROOT / "helm" / "values-kind.yaml")
CHAT_IMAGE_USER = 10001  # USER of the chat-system Dockerfiles (checked against them below when they are present)
# uid:gid of the user each bundled image runs as (from the images' Dockerfiles).
DEPENDENCY_USERS = {
    "mariadb": (999, 999),  # mariadb (Ubuntu): mysql
    "redis": (999, 1000),  # redis alpine: "alpine already has a gid 999, so we'll use the next id"
    "rabbitmq": (100, 101),  # rabbitmq alpine: adduser -u 100, addgroup -g 101
    "elasticsearch": (1000, None),  # elasticsearch: uid 1000 (gid 0 in the image; any group works)
    "pushgateway": (65534, 65534),  # nobody
}


def component(m: Manifest) -> str | None:
    return (m.obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


def only(manifests, kind: str, comp: str) -> Manifest:
    found = [m for m in of_kind(manifests, kind) if component(m) == comp]
    assert len(found) == 1, [str(m) for m in found]
    return found[0]


# -- 3: multi-install safety ---------------------------------------------------------------------------------------


def identities_outside_the_release_namespace(namespace: str, values: dict | None, apis) -> set[tuple]:
    found = set()
    for m in render(values, api_versions=apis, namespace=namespace):
        ns = m.obj["metadata"].get("namespace")
        if ns != namespace:
            found.add((m.obj["apiVersion"].split("/")[0], m.kind, ns, m.name))
    return found


@pytest.mark.parametrize(
    "values",
    [
        None,
        KIND_VALUES,
        {"operator": {"watchNamespaces": ["shared-tenants"]}},
        {"operator": {"clusterWide": True}, "metrics": {"dashboard": {"namespace": "grafana"}}},
    ],
    ids=["default", "kind", "shared-watched-namespace", "cluster-wide"],
)
def test_the_same_release_in_two_namespaces_shares_no_name(values):
    first = identities_outside_the_release_namespace("team-a", values, KIND_CLUSTER_APIS)
    second = identities_outside_the_release_namespace("team-b", values, KIND_CLUSTER_APIS)
    assert first, "expected cluster-scoped objects"
    assert not first & second, sorted(first & second)


def test_the_operator_serves_its_release_namespace_by_default():
    manifests = [m for m in rendered("default") if m.hook is None]
    (container,) = only(manifests, "Deployment", "operator").obj["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WATCH_NAMESPACES"] == NAMESPACE  # non-empty: chat_operator runs namespaced (clusterwide=False)
    assert of_kind(manifests, "ClusterKopfPeering") == []
    (peering,) = of_kind(manifests, "KopfPeering")
    assert peering.obj["metadata"]["namespace"] == NAMESPACE and env["PEERING_NAME"] == peering.name
    assert [b.obj["metadata"]["namespace"] for b in of_kind(manifests, "RoleBinding")] == [NAMESPACE]
    # The cluster-wide binding of the namespaced rules exists only with operator.clusterWide.
    assert all(b.name.endswith("-cluster") for b in of_kind(manifests, "ClusterRoleBinding"))


def test_cluster_wide_is_explicit_and_excludes_a_namespace_list():
    with pytest.raises(helm.HelmError, match="clusterWide"):
        render({"operator": {"clusterWide": True, "watchNamespaces": ["a"]}})
    manifests = render({"operator": {"clusterWide": True}})
    (peering,) = of_kind(manifests, "ClusterKopfPeering")
    assert peering.name.startswith(f"{NAMESPACE}-"), "cluster-scoped: the name carries the release namespace"


# -- 4: tenants reach the API --------------------------------------------------------------------------------------


def matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions In/NotIn/Exists/DoesNotExist)."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": labels.get(key) in vals,
            "NotIn": labels.get(key) not in vals,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def admits(policies: list[Manifest], target: dict[str, str], port: str, pod: dict[str, str], namespace: str) -> bool:
    """Whether the policies selecting the target pod admit a pod (labels, namespace) on the named port."""
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    selecting = [p for p in policies if matches(p.obj["spec"]["podSelector"], target)]
    assert selecting, "the target is not isolated by any policy"
    for policy in selecting:
        policy_ns = policy.obj["metadata"]["namespace"]
        for rule in policy.obj["spec"].get("ingress") or []:
            if port not in [p["port"] for p in rule.get("ports") or []]:
                continue
            for peer in rule.get("from") or []:
                if "namespaceSelector" in peer:
                    in_ns = matches(peer["namespaceSelector"], ns_labels)
                else:
                    in_ns = namespace == policy_ns
                if in_ns and ("podSelector" not in peer or matches(peer["podSelector"], pod)):
                    return True
    return False


def api_target(manifests) -> dict[str, str]:
    return pod_labels(only(manifests, "Deployment", "api"))


def test_a_tenant_pod_reaches_the_api_the_operator_hands_it():
    client = {"run": "acme-client"}  # operator/examples/consumer-pod.yaml, labelled by kubectl run or not at all
    # kind: the operator serves every namespace, and the example runs in `default`.
    kind = rendered("kind")
    policies = of_kind(kind, "NetworkPolicy")
    assert admits(policies, api_target(kind), "http", client, "default")
    # Default: the operator serves the release namespace.
    default = rendered("default")
    policies = of_kind(default, "NetworkPolicy")
    assert admits(policies, api_target(default), "http", client, NAMESPACE)
    assert not admits(policies, api_target(default), "http", client, "somewhere-else")
    # An explicit list: exactly those namespaces.
    listed = render({"operator": {"watchNamespaces": ["team-a"]}})
    policies = of_kind(listed, "NetworkPolicy")
    assert admits(policies, api_target(listed), "http", client, "team-a")
    assert not admits(policies, api_target(listed), "http", client, "team-b")
    # And it can be turned off (tenants outside the cluster only).
    closed = render({"networkPolicy": {"allowTenantNamespaces": False}})
    assert not admits(of_kind(closed, "NetworkPolicy"), api_target(closed), "http", client, NAMESPACE)


def test_tenant_namespaces_do_not_reach_the_databases():
    kind = rendered("kind")
    policies = of_kind(kind, "NetworkPolicy")
    mariadb = pod_labels(only(kind, "StatefulSet", "mariadb"))
    assert not admits(policies, mariadb, "mysql", {"run": "acme-client"}, "default")


# -- 5: the example consumer pod starts -----------------------------------------------------------------------------


def test_example_pods_that_refuse_root_name_a_numeric_user():
    for path in sorted((ROOT / "operator" / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Pod":
                continue
            pod_ctx = doc["spec"].get("securityContext") or {}
            for c in doc["spec"]["containers"]:
                ctx = {**pod_ctx, **(c.get("securityContext") or {})}
                if ctx.get("runAsNonRoot"):
                    # curlimages/curl runs as the non-numeric user curl_user: the kubelet cannot verify it is not
                    # root and refuses to start the container (CreateContainerConfigError).
                    assert isinstance(ctx.get("runAsUser"), int) and ctx["runAsUser"] > 0, (path.name, c["name"])


# -- 6: stable credentials -----------------------------------------------------------------------------------------


def secret_data(manifests) -> dict[str, dict[str, str]]:
    return {
        s.name: {k: base64.b64decode(v).decode() for k, v in (s.obj.get("data") or {}).items()}
        for s in of_kind(manifests, "Secret")
    }


def checksums(manifests) -> dict[str, dict[str, str]]:
    found = {}
    for m, _ in pod_specs(manifests):
        template = m.obj["spec"].get("template", {}).get("metadata", {})
        found[str(m)] = {k: v for k, v in (template.get("annotations") or {}).items() if k.startswith("checksum/")}
    return found


def test_checksum_annotations_are_stable_between_identical_renders():
    first, second = render(KIND_VALUES), render(KIND_VALUES)
    assert checksums(first) == checksums(second)
    assert any(c.get("checksum/secret") for c in checksums(first).values())


def test_a_password_seed_makes_template_renders_reproducible():
    seeded = {**KIND_VALUES, "auth": {**KIND_VALUES.get("auth", {}), "passwordSeed": "s3cr3t-seed-" + "x" * 20}}
    first, second = render(seeded), render(seeded)
    assert secret_data(first) == secret_data(second)
    other = render({**seeded, "auth": {**seeded["auth"], "passwordSeed": "another-seed-" + "y" * 20}})
    main = "chat-chat-system"
    assert secret_data(other)[main]["MARIADB_PASSWORD"] != secret_data(first)[main]["MARIADB_PASSWORD"]
    assert len(secret_data(first)[main]["REDIS_PASSWORD"]) >= 32
    # Another release or namespace with the same seed gets other passwords.
    elsewhere = render(seeded, namespace="other")
    assert secret_data(elsewhere)[main]["RABBITMQ_PASSWORD"] != secret_data(first)[main]["RABBITMQ_PASSWORD"]


def test_explicit_passwords_win_and_are_stable():
    values = {
        "mariadb": {"auth": {"password": "db-pass", "appPassword": "app-pass", "rootPassword": "root-pass"}},
        "redis": {"auth": {"password": "redis-pass"}},
        "rabbitmq": {"auth": {"password": "mq-pass"}},
        "elasticsearch": {"auth": {"password": "es-pass"}},
        "auth": {
            "adminApiKey": "admin-key-" + "k" * 32,
            "tokenSealingKey": "sealing-key-" + "s" * 32,
            "streamTicketKeys": "ticket-key-" + "t" * 32,
            "webhookSealingKey": "webhook-key-" + "w" * 32,
        },
    }
    first, second = render(values), render(values)
    assert secret_data(first) == secret_data(second)
    assert secret_data(first)["chat-chat-system"]["MARIADB_PASSWORD"] == "db-pass"
    assert secret_data(first)["chat-chat-system"]["TOKEN_SEALING_KEY"] == "sealing-key-" + "s" * 32
    assert secret_data(first)["chat-chat-system"]["STREAM_TICKET_KEYS"] == "ticket-key-" + "t" * 32
    assert secret_data(first)["chat-chat-system"]["WEBHOOK_SEALING_KEY"] == "webhook-key-" + "w" * 32
    assert secret_data(first)["chat-chat-system"]["MARIADB_APP_PASSWORD"] == "app-pass"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"auth": {"adminApiKey": "k" * 31}}, "adminApiKey"),
        ({"auth": {"passwordSeed": "s" * 31}}, "passwordSeed"),
        ({"auth": {"webhookSealingKey": "w" * 31}}, "webhookSealingKey"),
    ],
)
def test_the_admin_key_and_the_password_seed_have_a_minimum_length(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)
    longer = {"auth": {key: value + "x" for key, value in values["auth"].items()}}
    assert render(longer)


def test_an_upgrade_that_cannot_find_the_stored_passwords_fails_instead_of_replacing_them():
    # helm template --is-upgrade (or a client-side dry run) cannot look the Secret up: a random password would
    # silently differ from the one the database keeps.
    with pytest.raises(helm.HelmError, match="passwordSeed"):
        render(None, is_upgrade=True)
    assert render({"auth": {"passwordSeed": "seed-" + "s" * 32}}, is_upgrade=True)
    assert render(load_values_file(ROOT / "helm" / "values-external.yaml"), is_upgrade=True)


# -- 7: image references -------------------------------------------------------------------------------------------


def readme_install_values() -> dict:
    text = (CHART_DIR / "README.md").read_text()
    command = re.search(r"helm upgrade --install chat-system helm/chat-system [^\n]*\\\n[^\n]*", text).group(0)
    values: dict = {}
    words = shlex.split(command.replace("\\\n", " "))
    for flag, arg in itertools.pairwise(words):
        if flag == "--set":
            key, value = arg.split("=", 1)
            node = values
            *parents, leaf = key.split(".")
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
    return values


def all_images(manifests) -> list[str]:
    return [c["image"] for _, pod in pod_specs(manifests) for c in containers(pod)]


def test_the_readme_registry_example_renders_clean_image_references():
    values = readme_install_values()
    assert values.get("image", {}).get("registry"), "the README shows how to pull from a registry"
    for image in [i for i in all_images(render(values)) if "chat-system/" in i]:
        path = image.split("@")[0].rsplit(":", 1)[0].split("/")
        assert not any(a == b for a, b in itertools.pairwise(path)), f"doubled path segment: {image}"
    api = next(i for i in all_images(render(values)) if "/api:" in i)
    assert api == f"{values['image']['registry']}/chat-system/api:{values['image']['tag']}"


def test_a_global_registry_and_pull_secrets_reach_every_image_and_pod():
    values = {
        "global": {"imageRegistry": "mirror.example.com", "imagePullSecrets": ["mirror-pull"]},
        "mariadb": {"metrics": {"enabled": True}},
        "redis": {"metrics": {"enabled": True}},
    }
    manifests = render(values)
    for image in all_images(manifests):
        assert image.startswith("mirror.example.com/") and "//" not in image, image
    for m, pod in pod_specs(manifests):
        assert {"name": "mirror-pull"} in (pod.get("imagePullSecrets") or []), m
    es = next(i for i in all_images(manifests) if "elasticsearch" in i)
    assert es == "mirror.example.com/elasticsearch/elasticsearch:8.19.3"


# -- 8: only the public routes behind the ingress ------------------------------------------------------------------


def test_the_ingress_publishes_the_rest_api_only():
    (ingress,) = of_kind(rendered("kind"), "Ingress")
    paths = {p["path"] for rule in ingress.obj["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {"/applications", "/streams", "/healthz"}  # /streams: browsers open live streams with tickets
    for private in ("/metrics", "/readyz", "/docs", "/openapi.json"):
        assert not any(private.startswith(p) for p in paths), private


# -- 9: a stock kube-prometheus-stack, and explicit switches for GitOps ---------------------------------------------


def test_monitoring_objects_carry_the_label_a_stock_prometheus_selects():
    manifests = rendered("default-keda")
    for m in [*of_kind(manifests, "ServiceMonitor"), *of_kind(manifests, "PrometheusRule")]:
        assert m.obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", m


@pytest.mark.parametrize(
    ("switch", "apis", "expected"),
    [("auto", (), False), ("auto", KEDA_APIS, True), (True, (), True), ("true", (), True), (False, KEDA_APIS, False)],
)
def test_keda_switch(switch, apis, expected):
    manifests = render({"keda": switch}, api_versions=apis)
    assert bool(of_kind(manifests, "ScaledObject")) is expected
    assert bool(of_kind(manifests, "HorizontalPodAutoscaler")) is not expected


@pytest.mark.parametrize(
    ("switch", "apis", "expected"),
    [
        ("auto", (), False),
        ("auto", PROMETHEUS_OPERATOR_APIS, True),
        (True, (), True),
        (False, PROMETHEUS_OPERATOR_APIS, False),
    ],
)
def test_monitoring_switch(switch, apis, expected):
    manifests = render({"monitoring": switch}, api_versions=apis)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert bool(of_kind(manifests, kind)) is expected, kind
    assert bool([m for m in of_kind(manifests, "ConfigMap") if component(m) == "dashboard"]) is expected


def test_switches_refuse_anything_else():
    with pytest.raises(helm.HelmValuesError, match="keda"):
        render({"keda": "sometimes"})


# -- 10: runtime details -------------------------------------------------------------------------------------------


def test_security_contexts_match_the_users_of_the_images():
    for dockerfile in [*ROOT.glob("services/*/Dockerfile"), ROOT / "operator" / "Dockerfile"]:
        if dockerfile.exists():
            users = re.findall(r"^USER\s+(\d+)", dockerfile.read_text(), re.MULTILINE)
            assert users and int(users[-1]) == CHAT_IMAGE_USER, dockerfile
    manifests = render({"mariadb": {"metrics": {"enabled": True}}, "redis": {"metrics": {"enabled": True}}})
    for m, pod in pod_specs(manifests):
        ctx = pod.get("securityContext") or {}
        name = component(m)
        if name in DEPENDENCY_USERS:
            uid, gid = DEPENDENCY_USERS[name]
            assert ctx["runAsUser"] == uid, m
            if gid is not None:
                assert ctx["runAsGroup"] == gid and ctx.get("fsGroup", gid) == gid, m
        else:
            assert ctx["runAsUser"] == CHAT_IMAGE_USER, m


def test_statefulsets_name_headless_services():
    manifests = rendered("kind")
    services = {s.name: s for s in of_kind(manifests, "Service")}
    for sts in of_kind(manifests, "StatefulSet"):
        service = services[sts.obj["spec"]["serviceName"]]
        assert service.obj["spec"].get("clusterIP") == "None", sts
        assert service.obj["spec"]["selector"] == sts.obj["spec"]["selector"]["matchLabels"]


def test_writer_down_alert_fires_when_the_targets_are_gone():
    rule = only(rendered("default-keda"), "PrometheusRule", "alerts")
    exprs = {r["alert"]: r["expr"] for g in rule.obj["spec"]["groups"] for r in g["rules"] if "alert" in r}
    expr = exprs["ChatWriterDown"]
    for writer in ("chat-writer", "message-writer"):
        assert f'absent(up{{namespace="{NAMESPACE}", job="chat-chat-system-{writer}"}})' in expr


def test_no_password_on_a_command_line():
    manifests = render({"redis": {"metrics": {"enabled": True}}, "mariadb": {"metrics": {"enabled": True}}})
    for m, pod in pod_specs(manifests):
        for c in containers(pod):
            line = " ".join([*(c.get("command") or []), *(c.get("args") or [])])
            assert "--requirepass" not in line and "$(REDIS_PASSWORD)" not in line, m
            assert not re.search(r"\$\(\w*(PASSWORD|AUTH)\w*\)", line), m


# -- 11: uninstall does not strand Application objects --------------------------------------------------------------


def cleanup_hook(manifests) -> list[Manifest]:
    return [m for m in manifests if m.template.endswith("operator/uninstall-hook.yaml")]


@pytest.mark.parametrize("mode", ["delete", "orphan"])
def test_uninstall_handles_applications_before_the_operator_goes(mode):
    manifests = render({"operator": {"uninstall": {"applications": mode}}})
    hook = cleanup_hook(manifests)
    assert hook and all(m.hook == "pre-delete" for m in hook), [str(m) for m in hook]
    (job,) = of_kind(hook, "Job")
    (container,) = job.obj["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "chat_operator.uninstall"]  # tests/operator/test_uninstall.py
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODE"] == mode and env["WATCH_NAMESPACES"] == NAMESPACE
    # The hook's ServiceAccount, role and binding exist before the Job (lower weights).
    weights = {m.kind: int(m.obj["metadata"]["annotations"]["helm.sh/hook-weight"]) for m in hook}
    assert weights["ServiceAccount"] < weights["Job"] and weights["RoleBinding"] < weights["Job"]
    (role,) = of_kind(hook, "ClusterRole")
    applications = {
        "apiGroups": ["chat-system.io"],
        "resources": ["applications"],
        "verbs": ["get", "list", "delete", "patch"],
    }
    # Orphaning detaches the token Secrets from their objects, so that they outlive them.
    secrets = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["patch"]}  # read by an empty patch
    assert role.obj["rules"] == ([applications, secrets] if mode == "orphan" else [applications])


def test_uninstall_hook_can_be_left_out():
    assert cleanup_hook(render({"operator": {"uninstall": {"applications": "none"}}})) == []
    assert cleanup_hook(render({"operator": {"enabled": False}})) == []


# -- What users of well-kept charts expect --------------------------------------------------------------------------


def test_service_accounts_take_a_name_and_cloud_identity_annotations():
    irsa = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/chat"}
    manifests = render(
        {
            "serviceAccount": {"name": "chat-workloads", "annotations": irsa},
            "operator": {"serviceAccount": {"name": "chat-operator", "annotations": irsa}},
        }
    )
    accounts = {m.name: m for m in of_kind(manifests, "ServiceAccount") if m.hook is None}
    assert accounts["chat-workloads"].obj["metadata"]["annotations"] == irsa
    assert accounts["chat-operator"].obj["metadata"]["annotations"] == irsa
    assert (
        only(manifests, "Deployment", "api").obj["spec"]["template"]["spec"]["serviceAccountName"] == "chat-workloads"
    )
    binding_subjects = [
        s["name"] for b in of_kind(manifests, "RoleBinding") if b.hook is None for s in b.obj["subjects"]
    ]
    assert binding_subjects == ["chat-operator"]
    without = render({"serviceAccount": {"create": False, "name": "existing"}})
    assert "existing" not in {m.name for m in of_kind(without, "ServiceAccount")}


def test_api_probes_are_configurable_with_a_startup_probe():
    manifests = render(
        {"api": {"livenessProbe": {"enabled": True, "periodSeconds": 7}, "readinessProbe": {"enabled": False}}}
    )
    (container,) = only(manifests, "Deployment", "api").obj["spec"]["template"]["spec"]["containers"]
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert (
        container["livenessProbe"]["httpGet"]["path"] == "/healthz" and container["livenessProbe"]["periodSeconds"] == 7
    )
    assert "readinessProbe" not in container
    (default,) = only(rendered("default"), "Deployment", "api").obj["spec"]["template"]["spec"]["containers"]
    assert default["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for comp in ("chat-writer", "message-writer", "webhook-dispatcher", "operator"):
        (c,) = only(rendered("default"), "Deployment", comp).obj["spec"]["template"]["spec"]["containers"]
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(c), comp


EVERYWHERE = {
    "nodeSelector": {"pool": "chat"},
    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
    "affinity": {"nodeAffinity": {}},
    "priorityClassName": "chat-high",
}


def test_every_pod_takes_scheduling_and_a_priority_class():
    values = {
        key: dict(EVERYWHERE)
        for key in (
            "api",
            "chatWriter",
            "messageWriter",
            "webhookDispatcher",
            "counterCron",
            "migrations",
            "operator",
            "mariadb",
            "redis",
            "rabbitmq",
            "elasticsearch",
            "pushgateway",
        )
    }
    manifests = render(values)
    for m, pod in pod_specs(manifests):
        for field, value in EVERYWHERE.items():
            assert pod.get(field) == value, f"{m}: {field}"


def test_extra_env_from_volumes_mounts_sidecars_and_init_containers():
    extra = {
        "extraEnvFrom": [{"secretRef": {"name": "more-settings"}}],
        "extraVolumes": [{"name": "certs", "secret": {"secretName": "ca"}}],
        "extraVolumeMounts": [{"name": "certs", "mountPath": "/etc/ca", "readOnly": True}],
        "initContainers": [{"name": "wait", "image": "busybox:1.36"}],
        "sidecars": [{"name": "proxy", "image": "envoyproxy/envoy:v1.31.0"}],
    }
    manifests = render(
        {key: dict(extra) for key in ("api", "chatWriter", "messageWriter", "webhookDispatcher", "operator")}
    )
    for comp in ("api", "chat-writer", "message-writer", "webhook-dispatcher", "operator"):
        pod = only(manifests, "Deployment", comp).obj["spec"]["template"]["spec"]
        main = pod["containers"][0]
        assert {"secretRef": {"name": "more-settings"}} in main["envFrom"], comp
        assert {"name": "certs", "mountPath": "/etc/ca", "readOnly": True} in main["volumeMounts"], comp
        assert {"name": "certs", "secret": {"secretName": "ca"}} in pod["volumes"], comp
        assert [c["name"] for c in pod["containers"]][1:] == ["proxy"] and pod["initContainers"][0]["name"] == "wait"


def test_keda_fallback_and_activation_threshold():
    values = {
        "chatWriter": {"autoscaling": {"activationQueueLength": 50, "fallback": {"failureThreshold": 4, "replicas": 3}}}
    }
    manifests = render(values, api_versions=KEDA_APIS)
    scaled = next(m for m in of_kind(manifests, "ScaledObject") if m.name.endswith("chat-writer"))
    assert scaled.obj["spec"]["fallback"] == {"failureThreshold": 4, "replicas": 3}
    assert scaled.obj["spec"]["triggers"][0]["metadata"]["activationValue"] == "50"
    off = render(
        {"chatWriter": {"autoscaling": {"fallback": {"failureThreshold": 0, "replicas": 1}}}}, api_versions=KEDA_APIS
    )
    assert "fallback" not in next(m for m in of_kind(off, "ScaledObject") if m.name.endswith("chat-writer")).obj["spec"]


def test_api_hpa_takes_a_behavior():
    behavior = {
        "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 4, "periodSeconds": 60}]}
    }
    manifests = render({"api": {"autoscaling": {"enabled": True, "behavior": behavior}}})
    hpa = next(m for m in of_kind(manifests, "HorizontalPodAutoscaler") if component(m) == "api")
    assert hpa.obj["spec"]["behavior"] == behavior


def test_persistence_takes_an_existing_claim():
    manifests = render(
        {
            dep: {"persistence": {"existingClaim": f"{dep}-data"}}
            for dep in ("mariadb", "redis", "rabbitmq", "elasticsearch")
        }
    )
    for sts in of_kind(manifests, "StatefulSet"):
        assert "volumeClaimTemplates" not in sts.obj["spec"], sts
        volumes = {v["name"]: v for v in sts.obj["spec"]["template"]["spec"]["volumes"]}
        assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": f"{component(sts)}-data"}}


def test_dependency_metrics_are_scraped_and_admitted():
    values = {"mariadb": {"metrics": {"enabled": True}}, "redis": {"metrics": {"enabled": True}}}
    manifests = render(values, api_versions=PROMETHEUS_OPERATOR_APIS)
    monitors = {component(m): m for m in of_kind(manifests, "ServiceMonitor")}
    policies = of_kind(manifests, "NetworkPolicy")
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    for dep, port in (("rabbitmq", 15692), ("redis", 9121), ("mariadb", 9104)):
        assert monitors[dep].obj["spec"]["endpoints"][0]["port"] == "metrics"
        service = next(
            s for s in of_kind(manifests, "Service") if component(s) == dep and s.obj["spec"].get("clusterIP") != "None"
        )
        assert {"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"} in service.obj["spec"][
            "ports"
        ]
        assert admits(policies, pod_labels(only(manifests, "StatefulSet", dep)), "metrics", prometheus, "monitoring"), (
            dep
        )


def test_cpu_limits_are_optional():
    # Helm merges values into the defaults: null removes the default CPU limit.
    manifests = render({"api": {"resources": {"limits": {"cpu": None}}}})
    (container,) = only(manifests, "Deployment", "api").obj["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"memory": "512Mi"}
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    resources = {"$ref": "#/definitions/resources", "definitions": schema["definitions"]}
    jsonschema.validate({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}, resources)
    with pytest.raises(jsonschema.ValidationError, match="memory"):
        jsonschema.validate({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1"}}, resources)


def test_upgrade_notes_name_the_renamed_values():
    docs = (ROOT / "docs" / "kubernetes.md").read_text() + (CHART_DIR / "README.md").read_text()
    for renamed in ("api.ingress.paths", "operator.clusterWide", "serviceName", "image.registry", "passwordSeed"):
        assert renamed in docs, renamed
    assert "Upgrad" in (CHART_DIR / "README.md").read_text()


def _env_names(spec: dict) -> dict[str, dict]:
    return {e["name"]: e for c in containers(spec) for e in c.get("env") or []}


def test_the_token_sealing_key_reaches_only_the_api_the_operator_and_the_migrations():
    """TOKEN_SEALING_KEY opens every tenant's sealed token copy: only what needs it gets it (docs/security.md)."""
    manifests = render()
    holders = {m.name for m, spec in pod_specs(manifests) if "TOKEN_SEALING_KEY" in _env_names(spec)}
    assert holders == {"chat-chat-system-api", "chat-chat-system-operator", "chat-chat-system-migrations"}
    main = "chat-chat-system"
    assert len(secret_data(manifests)[main]["TOKEN_SEALING_KEY"]) >= 32
    assert secret_data(manifests)[f"{main}-migrations"]["TOKEN_SEALING_KEY"]


def test_the_webhook_sealing_key_reaches_only_the_api_the_operator_and_the_webhook_dispatcher():
    """WEBHOOK_SEALING_KEY opens every webhook endpoint's signing secret: the API and the operator seal the secrets
    of the endpoints they register, the dispatcher signs with them; nothing else gets it, the migrations included."""
    manifests = render()
    holders = {m.name for m, spec in pod_specs(manifests) if "WEBHOOK_SEALING_KEY" in _env_names(spec)}
    assert holders == {"chat-chat-system-api", "chat-chat-system-operator", "chat-chat-system-webhook-dispatcher"}
    for m, spec in pod_specs(manifests):
        if m.name in holders:
            ref = _env_names(spec)["WEBHOOK_SEALING_KEY"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "chat-chat-system", "key": "WEBHOOK_SEALING_KEY", "optional": True}, m
    main = "chat-chat-system"
    key = secret_data(manifests)[main]["WEBHOOK_SEALING_KEY"]
    assert len(key) >= 32 and key != secret_data(manifests)[main]["TOKEN_SEALING_KEY"]
    assert "WEBHOOK_SEALING_KEY" not in secret_data(manifests)[f"{main}-migrations"]


def test_the_rate_limit_fallback_shares_the_limit_among_the_api_processes():
    def fallback(values: dict) -> str:
        (api,) = [m for m in of_kind(render(values), "Deployment") if m.name.endswith("-api")]
        return _env_names(api.obj["spec"]["template"]["spec"])["RATE_LIMIT_FALLBACK_PROCESSES"]["value"]

    assert fallback({"api": {"replicaCount": 3, "gunicorn": {"workers": 2}}}) == "6"
    assert fallback({"api": {"autoscaling": {"enabled": True, "minReplicas": 4}, "gunicorn": {"workers": 3}}}) == "12"
