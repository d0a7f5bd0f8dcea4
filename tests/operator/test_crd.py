"""Offline checks of the custom resource: the CRD itself, its schema's verdicts, its CEL rules, the examples.

No API server here, so the API server's work is redone with the same ingredients: kubernetes-validate for
built-in kinds (the CRD object, Secrets, Pods), jsonschema for the CRD's openAPIV3Schema, cel-python for its
``x-kubernetes-validations`` rules, plus the structural-schema rules the API server enforces on a CRD.
"""

from __future__ import annotations

import copy
import re

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from chat_operator import kube
from tests.operator.conftest import CRD_PATH, EXAMPLES, PEERING_CRDS_PATH, application

# The CEL rules need ValidatingAdmissionPolicy-era CRD validation (GA in 1.29); the newest is what CI has.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]


def load_all(path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def walk(schema: dict, path: str = ""):
    """Every schema node with its path."""
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


# -- the CRD as a Kubernetes object -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crds_are_valid_kubernetes_objects(version):
    for doc in [*load_all(CRD_PATH), *load_all(PEERING_CRDS_PATH)]:
        kubernetes_validate.validate(doc, version, strict=True)


def test_crd_names_what_the_operator_watches(crd):
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{kube.PLURAL}.{kube.GROUP}"
    assert (spec["group"], spec["scope"]) == (kube.GROUP, "Namespaced")
    assert spec["names"]["kind"] == kube.KIND
    assert spec["names"]["plural"] == kube.PLURAL
    assert spec["names"]["singular"] == "application"
    assert spec["names"]["shortNames"] == ["capp"]
    [version] = spec["versions"]
    assert version["name"] == kube.VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_peering_crds_are_the_ones_kopf_uses():
    docs = {d["spec"]["names"]["kind"]: d for d in load_all(PEERING_CRDS_PATH)}
    assert docs["ClusterKopfPeering"]["spec"]["scope"] == "Cluster"
    assert docs["KopfPeering"]["spec"]["scope"] == "Namespaced"
    for doc in docs.values():
        assert doc["spec"]["group"] == "kopf.dev"
        assert doc["metadata"]["name"] == f"{doc['spec']['names']['plural']}.kopf.dev"


def test_schema_is_structural(crd_schema):
    """What the API server demands of a v1 CRD schema (structural schemas, KEP 1113)."""
    for path, node in walk(crd_schema):
        if node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string"):
            continue
        assert "type" in node, f"{path or '<root>'} has no type"
        for key in node.get("required", []):
            assert key in node.get("properties", {}), f"{path} requires undeclared {key}"
        if "default" in node:
            jsonschema.validate(node["default"], node)
        if node.get("x-kubernetes-list-type") == "map":
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in node["items"]["required"], f"{path}: map key {key} must be required"
    # metadata may only be narrowed in name/generateName; anything else is rejected by the API server.
    assert crd_schema["properties"]["metadata"] == {"type": "object"}


def test_printer_columns_point_at_declared_fields(crd, crd_schema):
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    names = [c["name"] for c in columns]
    default_view = [c["name"] for c in columns if not c.get("priority")]
    assert default_view == ["Display Name", "State", "Chats", "Messages", "Last Activity", "Age"]
    assert {"Token Secret", "Token Rotated", "Phase", "Policy"} <= set(names)  # with -o wide
    paths = {path for path, _ in walk(crd_schema)}
    for column in columns:
        if column["jsonPath"].startswith(".metadata."):
            continue
        assert column["jsonPath"] in paths, column


# -- the schema's verdicts ------------------------------------------------------------------------------------


def schema_errors(crd_schema: dict, obj: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(crd_schema)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]


GOOD_SPECS = {
    "minimal": {"name": "Acme"},
    "unicode": {"name": "Café ☕ 日本語 👋"},
    "longest name": {"name": "x" * 255},
    "inner spaces": {"name": "  padded name  "},
    "delete policy": {"name": "a", "deletionPolicy": "Delete"},
    "retain policy": {"name": "a", "deletionPolicy": "Retain"},
    "adopt": {"name": "a", "existingToken": "AbC_d-9" * 4},
    "suspended": {"name": "a", "suspended": True},
    "rotation": {"name": "a", "rotateToken": 3, "previousTokenGraceSeconds": 0},
    "longest grace": {"name": "a", "previousTokenGraceSeconds": 2_592_000},
    "all limits": {"name": "a", "limits": {"requestsPerSecond": 50, "maxChats": 1000, "maxMessageBytes": 4096}},
    "one limit": {"name": "a", "limits": {"maxChats": 1}},
    "largest limit": {"name": "a", "limits": {"maxChats": 4_294_967_295}},
    "webhook": {
        "name": "a",
        "webhooks": [{"name": "orders", "url": "https://h.example.com/", "secretRef": {"name": "s"}}],
    },
    "full webhook": {
        "name": "a",
        "webhooks": [
            {
                "name": "a-1",
                "url": "https://h.example.com/x",
                "eventTypes": ["chat.created", "message.updated"],
                "secretRef": {"name": "s", "key": "signing"},
                "enabled": False,
            },
            {"name": "b", "url": "http://10.0.0.1:8080/x", "secretRef": {"name": "s"}},  # the operator decides
        ],
    },
}
HOOK = {"name": "a", "url": "https://h.example.com/", "secretRef": {"name": "s"}}
BAD_SPECS = {
    "no name": {"deletionPolicy": "Retain"},
    "empty name": {"name": ""},
    "blank name": {"name": "   "},
    "name too long": {"name": "x" * 256},
    "control character": {"name": "line\nbreak"},
    "DEL character": {"name": "a\x7f"},
    "name not a string": {"name": 42},
    "unknown policy": {"name": "a", "deletionPolicy": "Recycle"},
    "lower-case policy": {"name": "a", "deletionPolicy": "delete"},
    "token with slash": {"name": "a", "existingToken": "abc/def"},
    "empty token": {"name": "a", "existingToken": ""},
    "token too long": {"name": "a", "existingToken": "a" * 65},
    "suspended not a boolean": {"name": "a", "suspended": "yes"},
    "negative rotation": {"name": "a", "rotateToken": -1},
    "rotation not a number": {"name": "a", "rotateToken": "now"},
    "negative grace": {"name": "a", "previousTokenGraceSeconds": -1},
    "grace over 30 days": {"name": "a", "previousTokenGraceSeconds": 2_592_001},
    "zero rate": {"name": "a", "limits": {"requestsPerSecond": 0}},
    "negative chats": {"name": "a", "limits": {"maxChats": -5}},
    "limit over 32 bits": {"name": "a", "limits": {"maxMessageBytes": 4_294_967_296}},
    "limit not a number": {"name": "a", "limits": {"maxChats": "many"}},
    "limits not an object": {"name": "a", "limits": 5},
    "webhook without url": {"name": "a", "webhooks": [{"name": "a", "secretRef": {"name": "s"}}]},
    "webhook without secret": {"name": "a", "webhooks": [{"name": "a", "url": "https://h.example.com/"}]},
    "webhook name not a label": {"name": "a", "webhooks": [{**HOOK, "name": "Orders"}]},
    "webhook ftp": {"name": "a", "webhooks": [{**HOOK, "url": "ftp://h.example.com/"}]},
    "webhook unknown event": {"name": "a", "webhooks": [{**HOOK, "eventTypes": ["chat.deleted"]}]},
    "webhook no events": {"name": "a", "webhooks": [{**HOOK, "eventTypes": []}]},
    "webhook enabled not a boolean": {"name": "a", "webhooks": [{**HOOK, "enabled": "yes"}]},
    "eleven webhooks": {"name": "a", "webhooks": [{**HOOK, "name": f"h{i}"} for i in range(11)]},
}


@pytest.mark.parametrize("spec", GOOD_SPECS.values(), ids=GOOD_SPECS.keys())
def test_good_specs_are_accepted(crd_schema, spec):
    obj = application("good")
    obj["spec"] = spec
    assert schema_errors(crd_schema, obj) == []


@pytest.mark.parametrize("spec", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_specs_are_rejected(crd_schema, spec):
    obj = application("bad")
    obj["spec"] = spec
    assert schema_errors(crd_schema, obj)


def test_spec_is_required(crd_schema):
    obj = application("bare")
    del obj["spec"]
    assert schema_errors(crd_schema, obj)


def test_bad_status_values_are_rejected(crd_schema):
    for status in (
        {"phase": "Exploded"},
        {"chatsCount": -1},
        {"conditions": [{"type": "Ready"}]},
        {"state": "Sleeping"},
        {"tokenGeneration": -1},
        {"suspended": "no"},
    ):
        obj = application("status")
        obj["status"] = status
        assert schema_errors(crd_schema, obj), status


# -- CEL rules (x-kubernetes-validations) ---------------------------------------------------------------------


def cel_rules(schema: dict):
    for path, node in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, rule


def evaluate(rule: str, self_: object, old_self: object | None = None) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule))
    activation = {"self": celpy.json_to_cel(self_)}
    if old_self is not None:
        activation["oldSelf"] = celpy.json_to_cel(old_self)
    return bool(program.evaluate(activation))


def rule_at(crd_schema: dict, path: str, about: str = "") -> str:
    [rule] = [r["rule"] for p, r in cel_rules(crd_schema) if p == path and about in r["message"]]
    return rule


def test_every_rule_compiles_and_has_a_message(crd_schema):
    rules = list(cel_rules(crd_schema))
    assert len(rules) == 5
    for _, rule in rules:
        celpy.Environment().compile(rule["rule"])
        assert rule["message"]


# self.<field> and oldSelf.<field> in a rule (not a method call such as self.matches(…)).
RULE_FIELD = re.compile(r"\b(?:self|oldSelf)\.([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")


def test_every_rule_type_checks_against_its_node(crd_schema):
    """What the API server does to every rule when it accepts the CRD, and cel-python does not: type-check it
    against the schema of its node, and bound its cost. An offline stand-in for the mistakes that get the CRD
    refused (the control-plane tests apply it to a real server): ``size()`` of an object with fixed properties
    (only strings, lists and maps have a size), a field the node does not declare, and a string or list read
    without maxLength/maxItems (the server estimates a rule's cost from those bounds)."""
    for path, node in walk(crd_schema):
        for rule in node.get("x-kubernetes-validations", []):
            text = rule["rule"]
            if node["type"] == "object" and "additionalProperties" not in node:
                assert "size(self)" not in text.replace(" ", ""), f"{path or '<root>'}: an object has no size()"
            for name in RULE_FIELD.findall(text):
                if path == "" and name == "metadata":
                    continue  # metadata.name is readable at the root, bounded by the server (253)
                field = node.get("properties", {}).get(name)
                assert field is not None, f"{path or '<root>'}: the rule reads undeclared {name}"
                if field["type"] == "string":
                    assert "maxLength" in field, f"{path}.{name}: a string read by a rule needs maxLength"
                if field["type"] == "array":
                    assert "maxItems" in field, f"{path}.{name}: a list read by a rule needs maxItems"


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        ({"name": "a"}, {"name": "b"}, True),
        ({"name": "a", "existingToken": "t1"}, {"name": "b", "existingToken": "t1"}, True),
        ({"name": "a", "existingToken": "t1"}, {"name": "a", "existingToken": "t2"}, False),
        ({"name": "a"}, {"name": "a", "existingToken": "t1"}, False),
        ({"name": "a", "existingToken": "t1"}, {"name": "a"}, False),
    ],
    ids=["rename", "rename-adopted", "change-token", "add-token", "remove-token"],
)
def test_existing_token_is_immutable(crd_schema, old, new, allowed):
    assert evaluate(rule_at(crd_schema, ".spec", "existingToken"), new, old) is allowed


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        ({"name": "a"}, {"name": "a", "rotateToken": 1}, True),
        ({"name": "a", "rotateToken": 1}, {"name": "a", "rotateToken": 2}, True),
        ({"name": "a", "rotateToken": 2}, {"name": "a", "rotateToken": 2, "suspended": True}, True),
        ({"name": "a", "rotateToken": 2}, {"name": "a", "rotateToken": 1}, False),
        ({"name": "a", "rotateToken": 2}, {"name": "a"}, False),
    ],
    ids=["first-rotation", "next-rotation", "unchanged", "decrease", "remove"],
)
def test_rotate_token_only_grows(crd_schema, old, new, allowed):
    assert evaluate(rule_at(crd_schema, ".spec", "rotateToken"), new, old) is allowed


@pytest.mark.parametrize(
    ("limits", "allowed"),
    [({"maxChats": 1}, True), ({"requestsPerSecond": 5, "maxMessageBytes": 10}, True), ({}, False)],
    ids=["one", "two", "empty"],
)
def test_limits_set_at_least_one_limit(crd_schema, limits, allowed):
    assert evaluate(rule_at(crd_schema, ".spec.limits"), limits) is allowed


INVISIBLE = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200B, 0x2060, 0xFEFF)]
ALLOWED = ["\u200c", "\u200d", "\u200e", "\u200f", "\U0001f469\u200d\U0001f467", "\u0645\u0631\u062d\u0628\u0627"]


@pytest.mark.parametrize("char", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
def test_names_with_invisible_characters_are_refused(crd_schema, char):
    assert evaluate(rule_at(crd_schema, ".spec.name"), f"a{char}b") is False


@pytest.mark.parametrize("text", ALLOWED, ids=["ZWNJ", "ZWJ", "LRM", "RLM", "emoji", "arabic"])
def test_names_with_joiners_and_direction_marks_are_accepted(crd_schema, text):
    assert evaluate(rule_at(crd_schema, ".spec.name"), f"a{text}b") is True


def test_defaults_of_the_management_fields(crd_schema):
    spec = crd_schema["properties"]["spec"]["properties"]
    assert spec["suspended"]["default"] is False
    assert spec["rotateToken"]["default"] == 0
    assert spec["previousTokenGraceSeconds"]["default"] == 86400


def test_resource_names_leave_room_for_the_secret_name(crd_schema):
    rule = rule_at(crd_schema, "")
    assert evaluate(rule, {"metadata": {"name": "a" * 242}})
    assert not evaluate(rule, {"metadata": {"name": "a" * 243}})
    assert len(kube.secret_name("a" * 242)) == 253  # the longest a Secret name may be


# -- examples and the bodies the operator sends ---------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(crd_schema, path):
    for doc in load_all(path):
        if doc["apiVersion"] == f"{kube.GROUP}/{kube.VERSION}":
            assert doc["kind"] == kube.KIND
            assert schema_errors(crd_schema, doc) == []
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_examples_cover_both_policies_and_adoption():
    specs = [d["spec"] for p in EXAMPLES for d in load_all(p) if d["kind"] == kube.KIND]
    assert {s.get("deletionPolicy", "Retain") for s in specs} == {"Retain", "Delete"}
    assert any("existingToken" in s for s in specs)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_token_secret_is_a_valid_secret(version):
    owner = application("acme")
    secret = kube.secret_body(owner, "t" * 32, "http://chat-system-api.chat.svc:8080")
    kubernetes_validate.validate(secret, version, strict=True)
    rotating = kube.secret_body(owner, "t" * 32, "http://x", "p" * 32, "2030-01-01T00:00:00Z")
    kubernetes_validate.validate(rotating, version, strict=True)
    assert set(rotating["data"]) == {"token", "apiUrl", "previousToken", "previousTokenExpiresAt"}
    assert secret["metadata"]["namespace"] == owner["metadata"]["namespace"]
    [ref] = secret["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "chat-system.io/v1",
        "kind": "Application",
        "name": "acme",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_owner_labels_are_not_copied_to_the_secret():
    owner = application("acme")
    owner["metadata"]["labels"] = {"app.kubernetes.io/instance": "gitops-app"}
    labels = kube.secret_body(owner, "t", "http://x")["metadata"]["labels"]
    assert "app.kubernetes.io/instance" not in labels


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_patches_the_operator_sends_keep_secrets_valid(version):
    owner = application("acme")
    desired = kube.secret_body(owner, "t" * 32, "http://x")
    stored = copy.deepcopy(desired)
    stored["metadata"].update(resourceVersion="7", uid="0f0e")
    detached = kube.detach_patch(stored, owner["metadata"]["uid"])
    assert detached["metadata"]["ownerReferences"] is None  # null removes the field in a merge patch
    orphan = copy.deepcopy(stored)
    del orphan["metadata"]["ownerReferences"]
    orphan["metadata"]["annotations"] = {kube.ANNOTATION_RETAINED: owner["metadata"]["uid"]}
    kubernetes_validate.validate(orphan, version, strict=True)
    newcomer = application("acme")
    plan = kube.plan_secret(orphan, kube.secret_body(newcomer, "t" * 32, "http://x"))
    assert plan.change == "adopted"
    readopted = copy.deepcopy(orphan)
    readopted["metadata"].update(plan.patch["metadata"])
    readopted["metadata"]["annotations"] = {}
    kubernetes_validate.validate(readopted, version, strict=True)


def test_status_the_operator_writes_fits_the_schema(crd_schema):
    obj = application("acme")
    now = "2025-01-01T00:00:00Z"
    conditions = kube.set_condition([], kube.READY, True, "Provisioned", "token Secret is written", 1, now)
    conditions = kube.set_condition(conditions, kube.SYNCED, False, "InvalidSpec", "spec.name …", 1, now)
    conditions = kube.set_condition(conditions, kube.SUSPENDED, True, "Suspended", "403", 1, now)
    conditions = kube.set_condition(conditions, kube.TOKEN_ROTATING, True, "GracePeriod", "until …", 1, now)
    obj["status"] = {
        "phase": "Failed",
        "state": "Suspended",
        "secretName": "acme-chat-token",
        "observedGeneration": 1,
        "chatsCount": 3,
        "messagesCount": 12,
        "lastActivityAt": now,
        "suspended": True,
        "tokenRotatedAt": now,
        "tokenGeneration": 2,
        "previousTokenExpiresAt": now,
        "conditions": conditions,
    }
    assert schema_errors(crd_schema, obj) == []


def test_conditions_keep_their_transition_time_until_they_flip():
    first = kube.set_condition([], kube.READY, True, "Provisioned", "", 1, "2025-01-01T00:00:00Z")
    same = kube.set_condition(first, kube.READY, True, "Provisioned", "", 2, "2025-01-02T00:00:00Z")
    flipped = kube.set_condition(same, kube.READY, False, "ApplicationMissing", "", 2, "2025-01-03T00:00:00Z")
    assert same[0]["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    assert same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "2025-01-03T00:00:00Z"
