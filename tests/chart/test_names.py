"""Object names and label values fit their kinds' limits for every release name Helm accepts (up to 53 characters).

A name the API server accepts can still break later: a StatefulSet's pods carry the label controller-revision-hash
"<name>-<up to 10 characters>", which must fit in 63, so a StatefulSet named with 53 or more characters is created
and then never gets a pod. Hence the limits below are those of everything a kind's controllers derive from the
name, not only the API server's own check; the server's check (and the pods reaching Running) is what the
control-plane tests show.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.chart.rendering import KIND_CLUSTER_APIS, NAMESPACE, Manifest, render

# Helm refuses release names longer than 53 characters.
RELEASES = [
    "chat",
    "release-name-of-29-characters",
    "a-release-name-of-forty-characters-00040",
    "a-release-name-as-long-as-helm-allows-it-to-be-000053",
]
VALUE_SETS = {
    "everything": {"redis": {"metrics": {"enabled": True}}, "mariadb": {"metrics": {"enabled": True}}},
    "rabbitmq-cluster": {"rabbitmq": {"replicas": 3}},
    "rabbitmq-operator": {"rabbitmq": {"replicas": 3, "clusterOperator": True}, "auth": {"existingSecret": "urls"}},
    "redis-sentinel": {"redis": {"mode": "sentinel"}},
    "redis-cluster": {"redis": {"mode": "cluster"}},
}
# The longest name each kind can take: Services are DNS labels; a StatefulSet leaves room for the revision hash
# its controller appends; a CronJob is refused above 52; Jobs and Pods name their pods' labels and host names;
# the RabbitMQ Cluster Operator names its StatefulSet "<name>-server".
NAME_LIMITS = {"Service": 63, "StatefulSet": 52, "CronJob": 52, "Job": 63, "Pod": 63, "RabbitmqCluster": 45}
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
STATEFUL = {"mariadb", "redis", "rabbitmq", "elasticsearch"}


def _render(release: str, values: dict) -> list[Manifest]:
    return render(values, api_versions=KIND_CLUSTER_APIS, release=release)


def _label_maps(node: object, key: str = "") -> Iterator[dict]:
    """Every label map in an object: labels, matchLabels, and a Service's plain selector."""
    if isinstance(node, dict):
        if key in ("labels", "matchLabels") or (key == "selector" and all(isinstance(v, str) for v in node.values())):
            yield node
            return
        for child_key, child in node.items():
            yield from _label_maps(child, child_key)
    elif isinstance(node, list):
        for child in node:
            yield from _label_maps(child, key)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
@pytest.mark.parametrize("release", RELEASES, ids=[f"{len(r)}-characters" for r in RELEASES])
def test_every_name_and_label_fits_its_kind(release, values):
    problems = []
    for m in _render(release, values):
        limit = NAME_LIMITS.get(m.kind, 253)
        if len(m.name) > limit or not SUBDOMAIN.match(m.name):
            problems.append(f"{m}: {len(m.name)} characters, at most {limit}")
        if m.kind == "Service" and not DNS_LABEL.match(m.name):
            problems.append(f"{m}: not a DNS label")
        for labels in _label_maps(m.obj):
            for key, value in labels.items():
                if len(value) > 63 or not LABEL_VALUE.match(value):
                    problems.append(f"{m}: label {key}={value!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
@pytest.mark.parametrize("release", RELEASES, ids=[f"{len(r)}-characters" for r in RELEASES])
def test_what_the_controllers_derive_from_the_names_fits(release, values):
    """The pods' controller-revision-hash and pod-name labels, the CronJob's Jobs, the operator's StatefulSet."""
    manifests = _render(release, values)
    services = {m.name for m in manifests if m.kind == "Service"}
    for m in manifests:
        if m.kind == "StatefulSet":
            assert len(f"{m.name}-{'x' * 10}") <= 63, m
            assert m.obj["spec"]["serviceName"] in services, m
        if m.kind == "CronJob":
            assert len(f"{m.name}-{'9' * 10}") <= 63, m
        if m.kind == "RabbitmqCluster":
            assert len(f"{m.name}-server-{'x' * 10}") <= 63, m


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_names_stay_unique_and_those_that_were_valid_do_not_change(values):
    """A name is cut (and ends in its hash) only when it did not fit: an upgrade renames no working object, and a
    StatefulSet keeps its volumes. Two components never end up with one name."""
    release = RELEASES[1]
    manifests = _render(release, values)
    prefix = f"{release}-chat-system"[:45].rstrip("-")
    by_kind: dict[str, list[str]] = {}
    for m in manifests:
        by_kind.setdefault(m.kind, []).append(m.name)
    for kind, names in by_kind.items():
        assert len(names) == len(set(names)), f"{kind}: {sorted(names)}"
    components = {(m.obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component") for m in manifests}
    names = {m.name for m in manifests}
    # Labels of objects not named after their component (the release Secret and ServiceAccount, the alert rules,
    # the TriggerAuthentication).
    for component in components - {None, "credentials", "workloads", "alerts", "autoscaling"}:
        former = f"{prefix}-{component}"
        limit = 52 if component in STATEFUL | {"counter-cron"} else 63
        if component == "rabbitmq" and values.get("rabbitmq", {}).get("clusterOperator"):
            limit = 45
        # Objects outside the release namespace (or cluster-scoped) carry the namespace in front.
        kept = {former, f"{NAMESPACE}-{former}"} & names
        if len(former) <= limit:
            assert kept, f"{component}: {former} was valid and must keep its name"
        else:
            assert former not in names, f"{component}: {former} is too long"


def test_a_cut_name_is_the_same_on_every_render():
    first = {m.name for m in _render(RELEASES[-1], VALUE_SETS["everything"])}
    second = {m.name for m in _render(RELEASES[-1], VALUE_SETS["everything"])}
    assert first == second
