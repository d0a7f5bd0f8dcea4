"""The chart installed for real: `helm install/upgrade/test/uninstall` (the real helm binary) on the control plane.

Each documented profile is installed into a namespace of its own, with the upstream CRDs its cluster would serve
(KEDA, prometheus-operator, the RabbitMQ cluster-operator, at the versions the chart documents). Every object must
be accepted by the API server — schema, CEL and admission, not a copy of them — every Deployment, StatefulSet and
Job must get its pods (Running/Ready or Succeeded on kwok's simulated nodes), and every pod must be startable: what
it references exists (:mod:`tests.kube.workloads`). Then `helm test`, and `helm uninstall` with its hooks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from chat_devtools.control_plane import ControlPlane
from tests.chart.conftest import EXTERNAL_URLS, EXTERNAL_VALUES, KIND_VALUES, MINIMAL
from tests.chart.rendering import load_values_file
from tests.kube.served import UPSTREAM, serve
from tests.kube.workloads import settled

pytestmark = [pytest.mark.kube, pytest.mark.slow]

CHART = Path(__file__).resolve().parents[2] / "helm" / "chat-system"
BOTH = {"keda": True, "monitoring": True}
NEITHER = {"keda": False, "monitoring": False}

# Keys of a connections Secret of the user's own (auth.existingSecret), as the chart's README lists them.
CONNECTION_KEYS = {
    "DATABASE_URL": "mysql+pymysql://chat:pw@mysql.db.svc:3306/chat_system?charset=utf8mb4",
    "REDIS_URL": "redis://:pw@redis.db.svc:6379/0",
    "RABBITMQ_URL": "amqp://chat:pw@rabbitmq.mq.svc:5672/%2F",
    "ADMIN_API_KEY": "k" * 40,
}
CA = {"ca.crt": "-----BEGIN CERTIFICATE-----\n(a CA certificate)\n-----END CERTIFICATE-----\n"}
BUNDLED_PASSWORD_KEYS = {
    "MARIADB_PASSWORD": "p" * 24,
    "MARIADB_ROOT_PASSWORD": "r" * 24,
    "REDIS_PASSWORD": "s" * 24,
    "RABBITMQ_PASSWORD": "t" * 24,
    "RABBITMQ_ERLANG_COOKIE": "c" * 32,
    "ELASTICSEARCH_PASSWORD": "e" * 24,
}


@dataclass
class Profile:
    """One way to install the chart: values, what the cluster serves, Secrets the user made first."""

    values: dict = field(default_factory=dict)
    groups: dict[str, bool] = field(default_factory=lambda: dict(NEITHER))
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    release: str = "chat"
    # Namespaces the operator serves besides the release's (made before the install, as the chart requires).
    watched: int = 0


PROFILES: dict[str, Profile] = {
    "default": Profile(),
    "default-keda-monitoring-auto": Profile(groups=BOTH),
    "monitoring-true": Profile({"monitoring": "true"}, groups={"keda": False, "monitoring": True}),
    "monitoring-false-served": Profile({"monitoring": "false", "keda": "false"}, groups=BOTH),
    "kind": Profile(load_values_file(KIND_VALUES), groups=BOTH),
    "kind-keda-off": Profile(load_values_file(KIND_VALUES), groups={"keda": False, "monitoring": True}),
    "external-secret": Profile(
        load_values_file(EXTERNAL_VALUES),
        groups=BOTH,
        # The production example: TLS to every dependency, verified against CA Secrets made beforehand.
        secrets={"chat-system-connections": CONNECTION_KEYS, **{name: CA for name in ("db-ca", "mq-ca", "search-ca")}},
    ),
    "external-urls": Profile(EXTERNAL_URLS),
    "minimal": Profile(MINIMAL, watched=2),
    "read-replicas": Profile(
        {"externalDatabase": {"readUrl": "mysql+pymysql://chat:pw@replica-1.db.svc:3306/chat_system"}}
    ),
    "existing-secret-bundled": Profile(
        {"auth": {"existingSecret": "my-connections"}},
        secrets={"my-connections": {**CONNECTION_KEYS, **BUNDLED_PASSWORD_KEYS}},
    ),
    "cluster-wide-operator": Profile({"operator": {"clusterWide": True}}),
    "ingress-tls": Profile(
        {"api": {"ingress": {"enabled": True, "host": "chat.test", "tls": {"enabled": True, "secretName": "tls"}}}}
    ),
    "rabbitmq-cluster": Profile({"rabbitmq": {"replicas": 3}}, groups=BOTH),
    "rabbitmq-cluster-operator": Profile(
        {"rabbitmq": {"replicas": 3, "clusterOperator": True}, "auth": {"existingSecret": "chat-urls"}},
        groups={**BOTH, "rabbitmq": True},
        secrets={"chat-urls": {**CONNECTION_KEYS, **BUNDLED_PASSWORD_KEYS}},
    ),
    "redis-sentinel": Profile({"redis": {"mode": "sentinel", "metrics": {"enabled": True}}}, groups=BOTH),
    "redis-cluster": Profile({"redis": {"mode": "cluster"}}, groups=BOTH),
    # 29 characters, not containing the chart name (so it is prefixed to it): the longest component names then pass
    # their kinds' limits unless the chart shortens them (CronJob 52, Service 63, StatefulSet 52: revision label).
    "release-name-29": Profile(release="platform-prod-eu-west-1-green"),
}


def install(plane: ControlPlane, namespace: str, profile: Profile, *extra: str) -> dict:
    """`helm install --wait` of the chart with the profile's values; the release's manifest as helm stored it."""
    values = json.loads(json.dumps(profile.values))  # a copy the test may change
    if profile.watched:
        watched = [f"{namespace}-w{i}" for i in range(profile.watched)]
        for name in watched:
            plane.kubectl("create", "namespace", name)
        values.setdefault("operator", {})["watchNamespaces"] = watched
    for name, data in profile.secrets.items():
        plane.kubectl(
            "-n", namespace, "create", "secret", "generic", name, *(f"--from-literal={k}={v}" for k, v in data.items())
        )
    values_file = plane.workdir / f"values-{namespace}.json"
    values_file.write_text(json.dumps(values))
    plane.helm(
        "install",
        profile.release,
        str(CHART),
        "-n",
        namespace,
        "-f",
        str(values_file),
        "--wait",
        "--wait-for-jobs",
        "--timeout",
        "5m",
        *extra,
        timeout=400,
    )
    return values


def manifest(plane: ControlPlane, namespace: str, release: str) -> list[dict]:
    """Every object of the release (hooks excluded), as helm recorded them."""
    text = plane.helm("get", "manifest", release, "-n", namespace).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def run_cronjobs(plane: ControlPlane, namespace: str) -> None:
    """Start each CronJob once (as its schedule would) and wait for the Job to complete."""
    for cron in plane.get_json("cronjobs", "-n", namespace)["items"]:
        name = cron["metadata"]["name"]
        plane.kubectl("-n", namespace, "create", "job", f"{name[:40]}-now", f"--from=cronjob/{name}")
        plane.kubectl(
            "-n", namespace, "wait", "--for=condition=complete", f"job/{name[:40]}-now", "--timeout=120s", timeout=150
        )


def _cluster_wide(profile: Profile) -> bool:
    return bool(profile.values.get("operator", {}).get("clusterWide"))


def _batch_key(name: str) -> tuple:
    """Profiles that can be installed side by side: the same served groups (cluster-wide, so one set at a time),
    and at most one cluster-wide operator (the chart refuses a second one, rightly)."""
    profile = PROFILES[name]
    return (tuple(sorted(profile.groups.items())), name if _cluster_wide(profile) else "")


# Profiles in batches (see _batch_key); the profiles of a batch are installed at once.
ORDER = sorted(PROFILES, key=lambda name: (_batch_key(name), name))


class Installs:
    """Installs each batch of profiles concurrently, the first time a test of the batch asks for one."""

    def __init__(self, plane: ControlPlane, served_groups) -> None:
        self.plane = plane
        self.served_groups = served_groups
        self.pool = ThreadPoolExecutor(max_workers=6)
        self.futures: dict[str, Future] = {}
        self.namespaces: dict[str, str] = {}

    def namespace(self, name: str) -> str:
        """The namespace of a profile's release, once it is installed (the install's error is raised here)."""
        if name not in self.futures:
            key = _batch_key(name)
            self.served_groups(**PROFILES[name].groups)
            for other in (n for n in ORDER if _batch_key(n) == key):
                namespace = self.namespaces[other] = f"p-{uuid.uuid4().hex[:6]}"
                self.plane.kubectl("create", "namespace", namespace)
                self.futures[other] = self.pool.submit(install, self.plane, namespace, PROFILES[other])
        self.futures[name].result()
        return self.namespaces[name]


@pytest.fixture(scope="module")
def installs(control_plane: ControlPlane) -> Iterator[Installs]:
    def served_groups(**wanted: bool) -> None:
        for group, on in wanted.items():
            serve(control_plane, UPSTREAM[group], on)

    installed = Installs(control_plane, served_groups)
    yield installed
    installed.pool.shutdown(wait=True)
    for name, namespace in installed.namespaces.items():
        control_plane.helm("uninstall", PROFILES[name].release, "-n", namespace, "--wait", check=False, timeout=400)
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.parametrize("name", ORDER)
def test_each_profile_installs_runs_tests_and_uninstalls(control_plane: ControlPlane, installs: Installs, name: str):
    profile = PROFILES[name]
    namespace = installs.namespace(name)
    try:
        settled(control_plane, namespace)
        run_cronjobs(control_plane, namespace)
        kinds = {obj["kind"] for obj in manifest(control_plane, namespace, profile.release)}
        keda = profile.values.get("keda", "auto")
        assert ("ScaledObject" in kinds) == (keda == "true" or (keda == "auto" and profile.groups.get("keda", False)))
        monitoring = profile.values.get("monitoring", "auto")
        served = profile.groups.get("monitoring", False)
        assert ("ServiceMonitor" in kinds) == (monitoring == "true" or (monitoring == "auto" and served))
        control_plane.helm("test", profile.release, "-n", namespace, "--timeout", "3m", timeout=240)
    finally:
        control_plane.helm("uninstall", profile.release, "-n", namespace, "--wait", "--timeout", "5m", timeout=400)
    left = control_plane.kubectl(
        "get", "all", "-n", namespace, "-l", f"app.kubernetes.io/instance={profile.release}", "-o", "name"
    ).stdout.split()
    assert [o for o in left if not o.startswith("pod/")] == []
    for watched in range(profile.watched):
        control_plane.kubectl("delete", "namespace", f"{namespace}-w{watched}", "--wait=false", check=False)


def test_two_releases_in_two_namespaces_coexist(control_plane: ControlPlane, served_groups):
    served_groups(**BOTH)
    first, second = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    with control_plane.namespace(first), control_plane.namespace(second):
        install(control_plane, first, Profile(groups=BOTH))
        install(control_plane, second, Profile(groups=BOTH))
        settled(control_plane, first)
        settled(control_plane, second)
        dashboards = [
            json.loads(next(iter(cm["data"].values())))["uid"]
            for ns in (first, second)
            for cm in control_plane.get_json("configmaps", "-n", ns, "-l", "grafana_dashboard=1")["items"]
        ]
        assert len(dashboards) == len(set(dashboards)) == 2, "each release's dashboard has a uid of its own"
        for ns in (first, second):
            control_plane.helm("uninstall", "chat", "-n", ns, "--wait", timeout=400)


def test_upgrade_hands_the_writers_from_hpa_to_keda(control_plane: ControlPlane, served_groups):
    """Installed without KEDA (CPU HPAs), KEDA installed, `helm upgrade`: ScaledObjects take over the HPAs."""
    served_groups(keda=False, monitoring=False)
    namespace = f"u-{uuid.uuid4().hex[:6]}"
    with control_plane.namespace(namespace):
        install(control_plane, namespace, Profile())
        settled(control_plane, namespace)
        hpas = {h["metadata"]["name"] for h in control_plane.get_json("hpa", "-n", namespace)["items"]}
        assert hpas
        served_groups(keda=True)
        control_plane.helm(
            "upgrade",
            "chat",
            str(CHART),
            "-n",
            namespace,
            "--reuse-values",
            "--wait",
            "--wait-for-jobs",
            "--timeout",
            "5m",
            timeout=400,
        )
        settled(control_plane, namespace)
        scaled = control_plane.get_json("scaledobjects", "-n", namespace)["items"]
        assert scaled, "keda=auto on a cluster that now serves keda.sh: ScaledObjects"
        for obj in scaled:
            # KEDA's admission webhook refuses a ScaledObject whose target an HPA already scales, unless it is told
            # to take that HPA over (and which one): without these the upgrade fails on a cluster running KEDA.
            assert obj["metadata"]["annotations"].get("scaledobject.keda.sh/transfer-hpa-ownership") == "true"
            taken = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"]
            assert taken in hpas
        control_plane.helm("uninstall", "chat", "-n", namespace, "--wait", timeout=400)
