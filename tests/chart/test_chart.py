"""The Helm chart, linted and rendered with Helm's Go SDK, every object checked against the Kubernetes schemas of
the version kind runs (see rendering.KUBE_VERSION), and the properties the issue asks for asserted."""

from __future__ import annotations

import base64
import json
import re

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart import crd_schemas
from tests.chart.conftest import EXTERNAL_URLS, VARIANTS, rendered
from tests.chart.rendering import (
    CHART_DIR,
    KEDA_APIS,
    KIND_CLUSTER_APIS,
    KUBE_VERSION,
    NAMESPACE,
    Manifest,
    containers,
    notes,
    of_kind,
    pod_labels,
    pod_specs,
    render,
)

WRITERS = ("chat-writer", "message-writer")
# Every autoscaled Deployment that KEDA may scale (the writers on their queues, the webhook dispatcher on its backlog).
KEDA_SCALED = (*WRITERS, "webhook-dispatcher")
CREDENTIAL_KEYS = {
    "DATABASE_URL",
    "DATABASE_READ_URL",
    "REDIS_URL",
    "RABBITMQ_URL",
    "ELASTICSEARCH_URL",
    "ADMIN_API_KEY",
    "MARIADB_PASSWORD",
    "MARIADB_ROOT_PASSWORD",
    "REDIS_PASSWORD",
    "RABBITMQ_PASSWORD",
    "RABBITMQ_ERLANG_COOKIE",
    "ELASTICSEARCH_PASSWORD",
    "WEBHOOK_SEALING_KEY",
}
CUSTOM_SCHEMAS = {**crd_schemas.HAND_WRITTEN, **crd_schemas.from_crds(CHART_DIR / "crds")}


def component(manifest: Manifest) -> str | None:
    return manifest.obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def named(manifests, kind: str, suffix: str) -> Manifest:
    matches = [m for m in of_kind(manifests, kind) if m.name.endswith(f"-{suffix}")]
    assert len(matches) == 1, f"expected one {kind} named *-{suffix}, got {[str(m) for m in matches]}"
    return matches[0]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


# -- Helm's own checks ---------------------------------------------------------------------------------------------


def test_helm_lint_strict_passes_for_every_variant(variant):
    values, _ = VARIANTS[variant]
    report = helm.lint(CHART_DIR, values, strict=True, kube_version=KUBE_VERSION)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error (1 is info)
    assert not report["errors"] and not problems, report


def test_every_object_validates_against_the_kubernetes_schemas(variant):
    failures = []
    for m in rendered(variant):
        key = (m.obj["apiVersion"], m.kind)
        try:
            if key in CUSTOM_SCHEMAS:
                jsonschema.validate(m.obj, CUSTOM_SCHEMAS[key])
            else:
                kubernetes_validate.validate(m.obj, KUBE_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            failures.append(f"{m}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            failures.append(f"{m}: no schema for {key}")
    assert not failures, "\n".join(failures)


def test_every_object_is_namespaced_to_the_release_or_cluster_scoped(variant):
    values = VARIANTS[variant][0] or {}
    served = values.get("operator", {}).get("watchNamespaces") or [NAMESPACE]
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterKopfPeering",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for m in rendered(variant):
        namespace = m.obj["metadata"].get("namespace")
        if m.kind in cluster_scoped:
            assert namespace is None, m
        elif m.kind in ("RoleBinding", "KopfPeering"):
            assert namespace in served, m
        else:
            assert namespace == NAMESPACE, m


def test_values_schema_is_a_valid_schema_that_accepts_the_defaults():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART_DIR / "values.yaml").read_text()), schema)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api": {"replicaCount": "two"}}, "replicaCount"),
        ({"apiReplicas": 3}, "apiReplicas"),
        ({"counterCron": {"schedule": "every five minutes"}}, "schedule"),
        ({"config": {"extra": {"DATABASE_URL": "mysql://x"}}}, "DATABASE_URL"),
        ({"config": {"extra": {"SMTP_PASSWORD": "x"}}}, "SMTP_PASSWORD"),
        ({"mariadb": {"auth": {"password": "has@and:"}}}, "password"),
        ({"redis": {"appendfsync": "no"}}, "appendfsync"),
        ({"chatWriter": {"resources": {"limits": None}}}, "limits"),
        ({"containerSecurityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "watchNamespaces"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ],
)
def test_schema_rejects_wrong_values_at_install_time(values, message):
    with pytest.raises(helm.HelmValuesError, match=message):
        render(values)


def test_cross_field_problems_are_reported_together():
    values = {"mariadb": {"enabled": False}, "redis": {"enabled": False}, "rabbitmq": {"enabled": False}}
    with pytest.raises(helm.HelmError) as failure:
        render(values)
    text = str(failure.value)
    for name in ("externalDatabase", "externalRedis", "externalRabbitmq"):
        assert name in text


def test_existing_secret_and_urls_in_values_conflict():
    values = {**EXTERNAL_URLS, "auth": {"existingSecret": "mine"}}
    with pytest.raises(helm.HelmError, match="existingSecret"):
        render(values)


# -- Autoscaling ---------------------------------------------------------------------------------------------------


def test_each_writer_has_exactly_one_scaler(variant):
    values, apis = VARIANTS[variant]
    manifests = rendered(variant)
    keda = set(KEDA_APIS) <= set(apis)
    for writer in WRITERS:
        deployment = named(manifests, "Deployment", writer)
        targets = [
            m
            for m in manifests
            if m.kind in ("ScaledObject", "HorizontalPodAutoscaler")
            and m.obj["spec"]["scaleTargetRef"]["name"] == deployment.name
        ]
        key = "chatWriter" if writer == "chat-writer" else "messageWriter"
        enabled = ((values or {}).get(key, {}).get("autoscaling", {})).get("enabled", True)
        if not enabled:
            assert targets == [], targets
            assert deployment.obj["spec"]["replicas"] == values[key]["replicaCount"]
            continue
        assert len(targets) == 1, f"{writer}: {[str(t) for t in targets]}"
        assert targets[0].kind == ("ScaledObject" if keda else "HorizontalPodAutoscaler")
        # Autoscaled: the Deployment leaves the replica count to the scaler, so upgrades never reset it.
        assert "replicas" not in deployment.obj["spec"]


def test_installing_keda_and_upgrading_hands_each_hpa_over_to_its_scaled_object():
    """The upgrade creates the ScaledObject while the chart's HPA still exists; KEDA's webhook refuses it unless
    it takes that very HPA over (KEDA's transfer-hpa-ownership, with the HPA named in the ScaledObject)."""
    before = {
        m.obj["spec"]["scaleTargetRef"]["name"]: m.name for m in of_kind(rendered("default"), "HorizontalPodAutoscaler")
    }
    scaled_objects = of_kind(render(None, api_versions=KEDA_APIS), "ScaledObject")
    assert len(scaled_objects) == len(KEDA_SCALED)
    for scaled in scaled_objects:
        assert scaled.obj["metadata"]["annotations"]["scaledobject.keda.sh/transfer-hpa-ownership"] == "true"
        hpa = scaled.obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"]
        assert hpa == before[scaled.obj["spec"]["scaleTargetRef"]["name"]], scaled


def test_writers_scale_on_the_depth_of_their_own_queue():
    manifests = rendered("kind")
    secret_name = named(manifests, "Secret", "system").name
    auth = of_kind(manifests, "TriggerAuthentication")
    assert len(auth) == 1
    # KEDA's own monitoring-only broker user (tests/chart/test_broker_users.py).
    expected = [{"parameter": "host", "name": secret_name, "key": "RABBITMQ_MONITOR_URL"}]
    assert auth[0].obj["spec"]["secretTargetRef"] == expected
    for writer, queue in (("chat-writer", "chat_system.chats"), ("message-writer", "chat_system.messages")):
        scaled = named(manifests, "ScaledObject", writer)
        (trigger,) = scaled.obj["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"] == {
            "protocol": "amqp",
            "queueName": queue,
            "mode": "QueueLength",
            "value": "200",
            "activationValue": "0",
        }
        assert trigger["authenticationRef"]["name"] == auth[0].name
        assert scaled.obj["spec"]["minReplicaCount"] >= 1


def test_queue_prefix_reaches_the_scalers():
    manifests = render({"config": {"queuePrefix": "tenant7"}}, api_versions=KEDA_APIS)
    queues = {
        trigger["metadata"]["queueName"]
        for m in of_kind(manifests, "ScaledObject")
        for trigger in m.obj["spec"]["triggers"]
        if trigger["type"] == "rabbitmq"
    }
    assert queues == {"tenant7.chats", "tenant7.messages"}


# -- Workloads -----------------------------------------------------------------------------------------------------


def test_count_sync_cronjob_forbids_concurrent_runs(variant):
    (cron,) = of_kind(rendered(variant), "CronJob")
    spec = cron.obj["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert spec["startingDeadlineSeconds"] > 0
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "counter_cron"]


def test_every_container_is_non_root_read_only_and_limited(variant):
    problems = []
    for m, pod in pod_specs(rendered(variant)):
        pod_ctx = pod.get("securityContext") or {}
        if pod_ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{m}: no RuntimeDefault seccomp profile")
        if pod.get("automountServiceAccountToken") is not False and component(m) not in (
            "operator",
            "operator-cleanup",
        ):
            problems.append(f"{m}: mounts a ServiceAccount token it does not need")
        for c in containers(pod):
            ctx = c.get("securityContext") or {}
            where = f"{m} container {c['name']}"
            if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
                problems.append(f"{where}: may run as root")
            if (ctx.get("runAsUser", pod_ctx.get("runAsUser")) or 0) == 0:
                problems.append(f"{where}: no non-zero runAsUser")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation allowed")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: writable root filesystem")
            if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities not dropped")
            resources = c.get("resources") or {}
            for kind in ("requests", "limits"):
                if set(resources.get(kind) or {}) != {"cpu", "memory"}:
                    problems.append(f"{where}: {kind} must set cpu and memory")
    assert not problems, "\n".join(problems)


def test_api_probes_and_gunicorn_settings():
    manifests = rendered("kind")
    (container,) = named(manifests, "Deployment", "api").obj["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = env_of(container)
    assert env["GUNICORN_WORKERS"]["value"] == "2" and env["GUNICORN_THREADS"]["value"] == "8"
    assert env["HOST"]["value"] == "0.0.0.0"
    assert env["PROMETHEUS_MULTIPROC_DIR"]["value"].startswith("/tmp/")
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_ingress_routes_to_the_api_with_the_nginx_class(variant):
    values, _ = VARIANTS[variant]
    ingresses = of_kind(rendered(variant), "Ingress")
    if values and values.get("api", {}).get("ingress", {}).get("enabled") is False:
        assert ingresses == []
        return
    (ingress,) = ingresses
    assert ingress.obj["spec"]["ingressClassName"] == "nginx"
    backend = ingress.obj["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": named(rendered(variant), "Service", "api").name, "port": {"name": "http"}}


def test_writers_expose_metrics_for_prometheus(variant):
    for writer in WRITERS:
        deployment = named(rendered(variant), "Deployment", writer)
        (container,) = deployment.obj["spec"]["template"]["spec"]["containers"]
        assert env_of(container)["METRICS_PORT"]["value"] == "9090"
        assert container["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
        assert container["livenessProbe"]["tcpSocket"]["port"] == "metrics"


def test_long_running_components_have_disruption_budgets():
    manifests = rendered("kind")
    covered = {component(m) for m in of_kind(manifests, "PodDisruptionBudget")}
    assert {"api", "chat-writer", "message-writer", "webhook-dispatcher", "operator"} <= covered


# -- Migrations ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant_name", "hooks", "secret_suffix"),
    [
        ("kind", "post-install,pre-upgrade", "migrations"),  # the bundled MariaDB exists only after install
        ("external-urls", "pre-install,pre-upgrade", "migrations"),
        ("external-secret", "pre-install,pre-upgrade", None),
    ],
)
def test_migrations_run_as_a_hook_before_the_workloads_roll(variant_name, hooks, secret_suffix):
    manifests = rendered(variant_name)
    (job,) = [m for m in of_kind(manifests, "Job") if component(m) == "migrations"]
    annotations = job.obj["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == hooks
    pod = job.obj["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "chat_common.ops.migrate"]
    assert "serviceAccountName" not in pod  # the release's ServiceAccount does not exist before pre-install
    ref = env_of(container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    if secret_suffix is None:
        assert ref["name"] == VARIANTS[variant_name][0]["auth"]["existingSecret"]
        return
    hook_secret = next(m for m in of_kind(manifests, "Secret") if m.name == ref["name"])
    assert hook_secret.hook == hooks
    assert int(hook_secret.obj["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        annotations["helm.sh/hook-weight"]
    )
    main_secret = named(manifests, "Secret", "system")
    assert hook_secret.obj["data"]["DATABASE_URL"] == main_secret.obj["data"]["DATABASE_URL"]


# Argo CD's documented mapping of Helm hooks (user-guide/helm.md): every sync is an install and an upgrade.
ARGO_PHASE_OF_HELM_HOOK = {
    "pre-install": "PreSync",
    "pre-upgrade": "PreSync",
    "post-install": "PostSync",
    "post-upgrade": "PostSync",
    "pre-delete": "PreDelete",
    "post-delete": "PostDelete",
}
ARGO_SYNC_PHASES = ["PreSync", "Sync", "PostSync"]


def argo_steps(manifest: Manifest) -> list[tuple[int, int]]:
    """(phase, wave) of each step Argo CD applies a manifest in during a sync, as its documentation says: its own
    hook annotation wins over Helm's (per object), sync-wave over hook-weight; plain objects are Sync, wave 0."""
    annotations = manifest.obj["metadata"].get("annotations") or {}
    if "argocd.argoproj.io/hook" in annotations:
        phases = annotations["argocd.argoproj.io/hook"].split(",")
    elif "helm.sh/hook" in annotations:
        phases = [ARGO_PHASE_OF_HELM_HOOK.get(h) for h in annotations["helm.sh/hook"].split(",")]
    else:
        phases = ["Sync"]
    wave = int(annotations.get("argocd.argoproj.io/sync-wave", annotations.get("helm.sh/hook-weight", 0)))
    return sorted((ARGO_SYNC_PHASES.index(p), wave) for p in phases if p in ARGO_SYNC_PHASES)


@pytest.mark.parametrize("variant_name", ["kind", "external-urls"])
def test_argo_cd_migrates_after_the_bundled_database_and_before_the_workloads(variant_name):
    """Argo CD runs pre-upgrade as PreSync on every sync, the first too: with the bundled MariaDB the migrations
    would wait for a database that the sync has not created yet. The chart places them itself."""
    manifests = rendered(variant_name)
    (job,) = [m for m in of_kind(manifests, "Job") if component(m) == "migrations"]
    (migrate,) = argo_steps(job)  # once per sync
    hook_secret = next(m for m in of_kind(manifests, "Secret") if component(m) == "migrations")
    assert argo_steps(hook_secret)[-1] < migrate
    for m in manifests:
        if m.kind in ("Deployment", "CronJob"):
            assert argo_steps(m)[0] > migrate, m  # the schema is ready before the workloads roll
        if component(m) == "mariadb" and m.kind != "NetworkPolicy":
            assert argo_steps(m)[-1] < migrate, m  # the database is there (and healthy) first
        if component(m) == "credentials" and variant_name == "kind":
            assert argo_steps(m)[-1] < migrate, m  # the bundled MariaDB's passwords


def test_argo_cd_runs_the_uninstall_cleanup_before_deleting():
    manifests = rendered("default")
    cleanup = [m for m in manifests if component(m) == "operator-cleanup" and m.hook]
    assert {m.kind for m in cleanup} == {"ServiceAccount", "ClusterRole", "RoleBinding", "Job"}
    for m in cleanup:
        annotations = m.obj["metadata"]["annotations"]
        assert annotations["argocd.argoproj.io/hook"] == "PreDelete", m
        assert annotations["argocd.argoproj.io/sync-wave"] == annotations["helm.sh/hook-weight"], m


# -- Credentials ---------------------------------------------------------------------------------------------------


def decoded_secrets(manifests) -> dict[str, str]:
    values = {}
    for secret in of_kind(manifests, "Secret"):
        for key, value in (secret.obj.get("data") or {}).items():
            values[f"{secret.name}/{key}"] = base64.b64decode(value).decode()
    return values


def test_a_read_replica_url_reaches_every_service_through_the_secret_only():
    replica = "mysql+pymysql://reader:s3cret-pw@db-replica:3306/chat_system?charset=utf8mb4"
    manifests = render({"externalDatabase": {"readUrl": replica}, "config": {"databaseReadMaxLagSeconds": 2}})
    assert decoded_secrets(manifests)[f"{named(manifests, 'Secret', 'system').name}/DATABASE_READ_URL"] == replica
    (api,) = [m for m in of_kind(manifests, "Deployment") if component(m) == "api"]
    (container,) = containers(api.obj["spec"]["template"]["spec"])
    assert env_of(container)["DATABASE_READ_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    config = next(m for m in of_kind(manifests, "ConfigMap") if component(m) == "config")
    assert config.obj["data"]["DATABASE_READ_MAX_LAG_SECONDS"] == "2"
    assert not any(k.endswith("/DATABASE_READ_URL") for k in decoded_secrets(render()))  # none by default
    with pytest.raises(helm.HelmError, match="DATABASE_READ_URL"):
        render({"externalDatabase": {"readUrl": replica}, "auth": {"existingSecret": "mine"}})


def test_credentials_are_only_in_secrets(variant):
    manifests = rendered(variant)
    secret_values = {v for v in decoded_secrets(manifests).values() if len(v) >= 8}
    problems = []
    for config in of_kind(manifests, "ConfigMap"):
        data = config.obj.get("data") or {}
        problems += [f"{config}: credential key {k}" for k in data if k in CREDENTIAL_KEYS]
        for key, value in data.items():
            problems += [f"{config}: {key} holds a Secret value" for s in secret_values if s in value]
            if re.search(r"://[^/@\s]+:[^/@\s]+@", value):
                problems.append(f"{config}: {key} holds a URL with a password")
    for m, pod in pod_specs(manifests):
        for c in containers(pod):
            for name, var in env_of(c).items():
                if name in CREDENTIAL_KEYS:
                    if "secretKeyRef" not in var.get("valueFrom", {}):
                        problems.append(f"{m}: {name} not read from a Secret")
                elif any(s in str(var.get("value", "")) for s in secret_values):
                    problems.append(f"{m}: {name} holds a Secret value in plain text")
    assert not problems, "\n".join(problems)


def test_generated_credentials_are_consistent_between_urls_and_dependencies():
    secrets = decoded_secrets(rendered("kind"))
    main = {k.split("/", 1)[1]: v for k, v in secrets.items() if k.startswith("chat-chat-system/")}
    # The services' user (rows only) and the migrations' user (schema): tests/chart/test_database_users.py.
    assert (
        f"//chat_app:{main['MARIADB_APP_PASSWORD']}@chat-chat-system-mariadb.chat-system.svc:3306/"
        in main["DATABASE_URL"]
    )
    assert (
        f"//chat:{main['MARIADB_PASSWORD']}@chat-chat-system-mariadb.chat-system.svc:3306/"
        in main["DATABASE_MIGRATIONS_URL"]
    )
    assert main["REDIS_URL"] == f"redis://:{main['REDIS_PASSWORD']}@chat-chat-system-redis.chat-system.svc:6379/0"
    assert main["RABBITMQ_URL"].startswith(
        f"amqp://chat_api:{main['RABBITMQ_API_PASSWORD']}@chat-chat-system-rabbitmq."
    )
    # The services' search user, not the elastic superuser (tests/chart/test_search_user.py).
    assert f"//chat_search:{main['ELASTICSEARCH_APP_PASSWORD']}@" in main["ELASTICSEARCH_URL"]
    assert "ADMIN_API_KEY" not in main  # kind values leave the admin endpoints open for the e2e suite
    assert len(main["MARIADB_PASSWORD"]) >= 24


def test_admin_key_is_generated_unless_explicitly_waived():
    main = decoded_secrets(rendered("default"))
    assert len(main["chat-chat-system/ADMIN_API_KEY"]) >= 24
    assert "WARNING" not in notes()
    assert "WARNING" in notes({"auth": {"requireAdminApiKey": False}})


def test_existing_secret_replaces_the_generated_one():
    manifests = rendered("external-secret")
    assert of_kind(manifests, "Secret") == []
    names = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for _, pod in pod_specs(manifests)
        for c in containers(pod)
        for e in c.get("env") or []
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert names == {"chat-system-connections"}


# -- Dependencies --------------------------------------------------------------------------------------------------


def test_bundled_dependencies_are_self_contained():
    manifests = rendered("kind")
    statefulsets = {component(m) for m in of_kind(manifests, "StatefulSet")}
    assert statefulsets == {"mariadb", "redis", "rabbitmq", "elasticsearch"}
    (redis,) = [m for m in of_kind(manifests, "StatefulSet") if component(m) == "redis"]
    script = redis.obj["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "--appendonly yes" in script, "Redis must keep an append-only file"


def test_each_dependency_switches_off_for_external_endpoints():
    manifests = rendered("external-urls")
    assert of_kind(manifests, "StatefulSet") == []
    main = {k.split("/", 1)[1]: v for k, v in decoded_secrets(manifests).items() if k.startswith("chat-chat-system/")}
    assert main["DATABASE_URL"] == EXTERNAL_URLS["externalDatabase"]["url"]
    assert main["REDIS_URL"] == EXTERNAL_URLS["externalRedis"]["url"]
    assert main["RABBITMQ_URL"] == EXTERNAL_URLS["externalRabbitmq"]["url"]
    assert "ELASTICSEARCH_URL" not in main  # no Elasticsearch: search runs on MySQL
    assert not any(k.endswith("PASSWORD") for k in main)


# -- Network policies ----------------------------------------------------------------------------------------------


def selected(policy: Manifest, labels: dict[str, str]) -> bool:
    wanted = policy.obj["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def admitted_components(policy: Manifest) -> set[str]:
    return {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in policy.obj["spec"].get("ingress", [])
        for peer in rule["from"]
        if "namespaceSelector" not in peer
    }


def test_every_pod_is_covered_by_a_network_policy(variant):
    values, _ = VARIANTS[variant]
    manifests = rendered(variant)
    policies = of_kind(manifests, "NetworkPolicy")
    if values and values.get("networkPolicy", {}).get("enabled") is False:
        assert policies == []
        return
    uncovered = [str(m) for m, _ in pod_specs(manifests) if not any(selected(p, pod_labels(m)) for p in policies)]
    assert not uncovered, uncovered


def test_network_policies_admit_only_the_components_that_need_each_dependency():
    manifests = rendered("kind")
    policy = {component(p): p for p in of_kind(manifests, "NetworkPolicy")}
    assert admitted_components(policy["mariadb"]) == {
        "api",
        "chat-writer",
        "message-writer",
        "webhook-dispatcher",
        "counter-cron",
        "migrations",
        "operator",
    }
    assert admitted_components(policy["redis"]) == {"api", "chat-writer", "message-writer", "counter-cron", "operator"}
    assert admitted_components(policy["rabbitmq"]) == {"api", "chat-writer", "message-writer", "operator"}
    assert admitted_components(policy["elasticsearch"]) == {"api", "message-writer", "operator"}
    assert admitted_components(policy["pushgateway"]) == {"counter-cron"}
    assert admitted_components(policy["chat-writer"]) == set()
    for job in ("counter-cron", "migrations"):
        assert policy[job].obj["spec"]["ingress"] == []
    # KEDA reads the queue depth from another namespace; the ingress controller and Prometheus reach the API.
    rabbit_namespaces = [
        peer["namespaceSelector"]["matchLabels"]
        for rule in policy["rabbitmq"].obj["spec"]["ingress"]
        if rule["ports"][0]["port"] == "amqp"
        for peer in rule["from"]
        if "namespaceSelector" in peer
    ]
    assert rabbit_namespaces == [{"kubernetes.io/metadata.name": "keda"}]


# -- Operator ------------------------------------------------------------------------------------------------------


def test_operator_watches_all_namespaces_with_cluster_rbac():
    # values-kind.yaml sets operator.clusterWide (one release per kind cluster); hooks are left out.
    manifests = [m for m in rendered("kind") if m.hook is None]
    deployment = named(manifests, "Deployment", "operator")
    (container,) = deployment.obj["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["WATCH_NAMESPACES"]["value"] == ""
    assert env["API_INTERNAL_URL"]["value"] == "http://chat-chat-system-api.chat-system.svc:80"
    (peering,) = of_kind(manifests, "ClusterKopfPeering")
    assert env["PEERING_NAME"]["value"] == peering.name
    bindings = of_kind(manifests, "ClusterRoleBinding")
    roles = {r.name: r for r in of_kind(manifests, "ClusterRole")}
    assert len(bindings) == 2 and of_kind(manifests, "RoleBinding") == []
    rules = [rule for b in bindings for rule in roles[b.obj["roleRef"]["name"]].obj["rules"]]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    # Least privilege: exactly the calls chat_operator.kube and kopf make (scanning of CRDs/namespaces is off).
    assert {
        *(("chat-system.io", "applications", v) for v in ("get", "list", "watch", "patch")),
        ("chat-system.io", "applications/status", "patch"),
        ("chat-system.io", "applications/finalizers", "update"),
        # No get: its own Secrets are read with an empty patch (tests/chart/test_operator_secrets.py).
        *(("", "secrets", v) for v in ("create", "patch")),
        ("", "events", "create"),
        *(("kopf.dev", "kopfpeerings", v) for v in ("get", "list", "watch", "patch")),
        *(("kopf.dev", "clusterkopfpeerings", v) for v in ("get", "list", "watch", "patch")),
    } == granted


def test_operator_watching_some_namespaces_is_bound_there_only():
    manifests = [m for m in rendered("minimal") if m.hook is None]
    bindings = of_kind(manifests, "RoleBinding")
    assert sorted(b.obj["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    peerings = of_kind(manifests, "KopfPeering")
    assert sorted(p.obj["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert of_kind(manifests, "ClusterKopfPeering") == []
    # Only the cluster-scoped peering stays bound cluster-wide.
    (cluster_binding,) = of_kind(manifests, "ClusterRoleBinding")
    assert cluster_binding.name.endswith("-cluster")


def test_operator_can_be_left_out():
    manifests = render({"operator": {"enabled": False}})
    assert not [m for m in manifests if component(m) == "operator"]


# -- Monitoring objects --------------------------------------------------------------------------------------------


def test_monitoring_objects_need_the_prometheus_operator_crds():
    assert of_kind(rendered("default"), "ServiceMonitor") == []
    assert of_kind(rendered("default"), "PrometheusRule") == []
    manifests = rendered("default-keda")
    monitored = {component(m) for m in of_kind(manifests, "ServiceMonitor")}
    assert monitored == {
        "api",
        "chat-writer",
        "message-writer",
        "webhook-dispatcher",
        "operator",
        "pushgateway",
        "rabbitmq",
    }
    for monitor in of_kind(manifests, "ServiceMonitor"):
        service = named(manifests, "Service", component(monitor))
        ports = {p["name"] for p in service.obj["spec"]["ports"]}
        assert monitor.obj["spec"]["endpoints"][0]["port"] in ports
    assert len(of_kind(manifests, "PrometheusRule")) == 1


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar():
    assert [m for m in of_kind(rendered("default"), "ConfigMap") if component(m) == "dashboard"] == []
    (dashboard,) = [m for m in of_kind(rendered("default-keda"), "ConfigMap") if component(m) == "dashboard"]
    assert dashboard.obj["metadata"]["labels"]["grafana_dashboard"] == "1"
    # The release namespace: a cluster serving monitoring.coreos.com may have no namespace "monitoring".
    assert dashboard.obj["metadata"]["namespace"] == NAMESPACE
    assert dashboard.obj["data"]["chat-system.json"].lstrip().startswith("{")
    elsewhere = render({"metrics": {"dashboard": {"namespace": "grafana"}}}, api_versions=KIND_CLUSTER_APIS)
    (moved,) = [m for m in of_kind(elsewhere, "ConfigMap") if component(m) == "dashboard"]
    assert moved.obj["metadata"]["namespace"] == "grafana" and moved.name.startswith(f"{NAMESPACE}-")


def test_each_release_has_a_dashboard_of_its_own():
    """Grafana keeps one dashboard per uid (and per title in a folder): a fixed uid made releases overwrite
    each other's dashboard."""

    def board(release: str, namespace: str) -> dict:
        manifests = render(None, api_versions=KIND_CLUSTER_APIS, release=release, namespace=namespace)
        (dashboard,) = [m for m in of_kind(manifests, "ConfigMap") if component(m) == "dashboard"]
        return json.loads(dashboard.obj["data"]["chat-system.json"])

    boards = [board("chat", "team-a"), board("chat", "team-b"), board("other", "team-a")]
    assert len({b["uid"] for b in boards}) == 3 and len({b["title"] for b in boards}) == 3
    assert all(len(b["uid"]) <= 40 for b in boards)  # Grafana's limit
    assert board("chat", "team-a") == boards[0]  # the same on every render
    source = json.loads((CHART_DIR / "dashboards" / "chat-system.json").read_text())
    assert {k: v for k, v in boards[0].items() if k not in ("uid", "title")} == {
        k: v for k, v in source.items() if k not in ("uid", "title")
    }


def test_count_sync_pushes_to_the_bundled_pushgateway():
    (config,) = [m for m in of_kind(rendered("kind"), "ConfigMap") if component(m) == "config"]
    assert config.obj["data"]["PUSHGATEWAY_URL"] == "http://chat-chat-system-pushgateway.chat-system.svc:9091"
    (config,) = [m for m in of_kind(rendered("minimal"), "ConfigMap") if component(m) == "config"]
    assert config.obj["data"]["PUSHGATEWAY_URL"] == "http://pushgateway.monitoring.svc:9091"
