"""The operator's Secret access in the chart: create and patch only (no get/list/watch), and an admission policy
that admits its writes — and so its reads, which are empty patches — only on the Secrets it labelled. Checked on a
real API server in tests/kube/test_operator_in_cluster.py."""

from __future__ import annotations

from chat_operator.kube import LABEL_MANAGED_BY, MANAGED_BY, SIGNING_LABEL
from tests.chart.rendering import of_kind, render


def _secret_verbs(manifests) -> list[list[str]]:
    return [
        rule["verbs"]
        for role in of_kind(manifests, "ClusterRole")
        for rule in role.obj["rules"]
        if "secrets" in rule.get("resources", [])
    ]


def test_no_role_of_the_operator_reads_secrets():
    for uninstall in ("delete", "orphan"):
        verbs = _secret_verbs(render({"operator": {"uninstall": {"applications": uninstall}}}))
        assert verbs and all("get" not in v and "list" not in v and "watch" not in v for v in verbs), verbs


def test_the_policy_binds_the_operator_and_its_uninstall_hook_to_their_own_secrets():
    manifests = render({"operator": {"uninstall": {"applications": "orphan"}}})
    (policy,) = of_kind(manifests, "ValidatingAdmissionPolicy")
    (binding,) = of_kind(manifests, "ValidatingAdmissionPolicyBinding")
    assert binding.obj["spec"] == {"policyName": policy.obj["metadata"]["name"], "validationActions": ["Deny"]}
    (condition,) = policy.obj["spec"]["matchConditions"]
    assert "system:serviceaccount:chat-system:chat-chat-system-operator" in condition["expression"]
    assert "system:serviceaccount:chat-system:chat-chat-system-operator-cleanup" in condition["expression"]
    assert policy.obj["spec"]["failurePolicy"] == "Fail"
    for validation in policy.obj["spec"]["validations"]:
        assert f"labels['{LABEL_MANAGED_BY}'] == '{MANAGED_BY}'" in validation["expression"]  # the operator's label
        assert validation["reason"] == "Forbidden"  # the operator tells "not ours" by the 403


def test_the_policy_can_be_left_out():
    assert not of_kind(render({"operator": {"restrictSecrets": False}}), "ValidatingAdmissionPolicy")


def test_clusters_without_validating_admission_policy_get_none():
    assert not of_kind(render(None, kube_version="v1.29.4"), "ValidatingAdmissionPolicy")
    assert of_kind(render(None, kube_version="v1.30.0"), "ValidatingAdmissionPolicy")


def test_the_policy_lets_the_operator_read_only_the_signing_secrets_labelled_for_it():
    """Webhook signing Secrets (spec.webhooks[].secretRef): an update that changes nothing of a Secret labelled
    chat-system.io/webhook-secret=true is the operator reading it; every validation lets that through, nothing else.
    Checked on a real API server in tests/kube/test_webhook_secret_policy.py."""
    (policy,) = of_kind(render(None), "ValidatingAdmissionPolicy")
    (variable,) = policy.obj["spec"]["variables"]
    assert variable["name"] == "readsSigningSecret"
    expression = variable["expression"]
    assert f"oldObject.metadata.labels['{SIGNING_LABEL}'] == 'true'" in expression
    assert "request.operation == 'UPDATE'" in expression
    for part in ("labels", "annotations", "finalizers", "ownerReferences"):
        assert f"object.metadata.{part} == oldObject.metadata.{part}" in expression, part
    for part in ("data", "type", "immutable"):
        assert f"object.{part} == oldObject.{part}" in expression, part
    for validation in policy.obj["spec"]["validations"]:
        assert validation["expression"].startswith("variables.readsSigningSecret || ")
