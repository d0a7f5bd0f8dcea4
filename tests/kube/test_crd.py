"""The Application CRD against the real API server: it is accepted, and each CEL rule accepts and refuses as meant.

The server type-checks and cost-estimates every ``x-kubernetes-validations`` rule when the CRD is created (cel-python
in tests/operator does neither), then evaluates them on every write. Each rule of the CRD file must have an accepted
and a refused example below — a rule added without one fails :func:`test_every_rule_has_examples` — and the
refusal must carry the rule's message. The printer columns are read back as `kubectl get applications` shows them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from chat_devtools.control_plane import ControlPlane

pytestmark = pytest.mark.kube

CRD_FILE = Path(__file__).resolve().parents[2] / "helm" / "chat-system" / "crds" / "applications.chat-system.io.yaml"
CRD = yaml.safe_load(CRD_FILE.read_text())


def rules(schema: dict, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every (schema path, validation rule) of the CRD's schema."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path or ".", rule
    for name, child in schema.get("properties", {}).items():
        yield from rules(child, f"{path}.{name}")
    if "items" in schema:
        yield from rules(schema["items"], f"{path}[]")


SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
RULES = list(rules(SCHEMA))


def application(resource: str, namespace: str, **spec: object) -> dict:
    return {
        "apiVersion": "chat-system.io/v1",
        "kind": "Application",
        "metadata": {"name": resource, "namespace": namespace},
        "spec": {"name": "A tenant", **spec},
    }


def long_name(length: int) -> str:
    """A valid DNS subdomain of ``length`` characters, for lengths that end inside its fourth label (193-255)."""
    assert 193 <= length <= 255
    return ".".join(["a" * 63] * 4)[:length]


@dataclass(frozen=True)
class Example:
    """A write the rule accepts and one it refuses, each a function of (plane, namespace) returning the result."""

    accepted: Callable[[ControlPlane, str], object]
    refused: Callable[[ControlPlane, str], object]


def _create(spec: dict, name: str | None = None):
    def run(plane: ControlPlane, namespace: str):
        obj = application(name or f"app-{uuid.uuid4().hex[:6]}", namespace, **spec)
        return plane.kubectl("create", "-f", "-", stdin=json.dumps(obj), check=False)

    return run


def _update(first: dict, patch: dict):
    def run(plane: ControlPlane, namespace: str):
        name = f"app-{uuid.uuid4().hex[:6]}"
        plane.kubectl("create", "-f", "-", stdin=json.dumps(application(name, namespace, **first)))
        return plane.kubectl(
            "-n",
            namespace,
            "patch",
            "application",
            name,
            "--type=merge",
            "-p",
            json.dumps({"spec": patch}),
            check=False,
        )

    return run


def _named(length: int):
    def run(plane: ControlPlane, namespace: str):
        obj = application(long_name(length), namespace)
        return plane.kubectl("create", "-f", "-", stdin=json.dumps(obj), check=False)

    return run


# The examples, by the start of the rule's message.
EXAMPLES: dict[str, Example] = {
    "metadata.name must be at most 242": Example(accepted=_named(242), refused=_named(243)),
    "existingToken cannot be added, changed or removed": Example(
        accepted=_update({"existingToken": "abc"}, {"name": "renamed"}),
        refused=_update({"existingToken": "abc"}, {"existingToken": "abd"}),
    ),
    "rotateToken can only grow": Example(
        accepted=_update({"rotateToken": 1}, {"rotateToken": 2}),
        refused=_update({"rotateToken": 1}, {"rotateToken": 0}),
    ),
    "limits must set at least one": Example(
        accepted=_create({"limits": {"maxChats": 5}}),
        refused=_create({"limits": {}}),
    ),
    "name must not contain bidirectional-override": Example(
        accepted=_create({"name": "family \U0001f469\u200d\U0001f469\u200d\U0001f467 \u200fright-to-left"}),
        refused=_create({"name": "invoice\u202egnp.exe"}),
    ),
}
# What chat_common.validation refuses in names; the CRD must refuse each of them too.
INVISIBLE = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200B, 0x2060, 0xFEFF)]


def example_for(message: str) -> Example | None:
    return next((example for start, example in EXAMPLES.items() if message.startswith(start)), None)


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane) -> str:
    """The chart's CRD, created on the server (refused there if any rule does not type-check)."""
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD['metadata']['name']}", "--timeout=60s")
    return CRD["metadata"]["name"]


def test_the_server_accepts_the_crd(control_plane: ControlPlane, crd: str):
    served = control_plane.get_json("crd", crd)
    conditions = {c["type"]: c["status"] for c in served["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions.get("NamesAccepted") == "True"


def test_every_rule_has_examples():
    missing = [f"{path}: {rule['message']}" for path, rule in RULES if example_for(rule["message"]) is None]
    assert missing == [], "add an accepted and a refused example to EXAMPLES"


@pytest.mark.parametrize("path,rule", RULES, ids=[r["message"][:40] for _, r in RULES])
def test_each_rule_accepts_and_refuses_with_its_message(
    control_plane: ControlPlane, crd: str, kube_namespace: str, path: str, rule: dict
):
    example = example_for(rule["message"])
    assert example is not None
    accepted = example.accepted(control_plane, kube_namespace)
    assert accepted.returncode == 0, accepted.stderr
    refused = example.refused(control_plane, kube_namespace)
    assert refused.returncode != 0, f"{path}: {rule['rule']} let the refused example through"
    assert rule["message"] in " ".join(refused.stderr.split()), refused.stderr


@pytest.mark.parametrize("char", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
def test_the_server_refuses_each_invisible_character_the_api_refuses(
    control_plane: ControlPlane, crd: str, kube_namespace: str, char: str
):
    refused = _create({"name": f"a{char}b"})(control_plane, kube_namespace)
    assert refused.returncode != 0, f"U+{ord(char):04X} accepted"
    assert "bidirectional-override or zero-width" in refused.stderr


def test_every_invisible_character_is_one_the_api_refuses():
    from chat_common.validation import INVISIBLE as API_INVISIBLE

    assert [c for c in map(chr, range(0x2000, 0x10000)) if API_INVISIBLE.search(c)] == sorted(INVISIBLE)


def test_printer_columns_show_what_the_operator_reports(control_plane: ControlPlane, crd: str, kube_namespace: str):
    ns = kube_namespace
    control_plane.kubectl("create", "-f", "-", stdin=json.dumps(application("shown", ns, name="Shown tenant")))
    status = {
        "status": {
            "phase": "Ready",
            "state": "Suspended",
            "chatsCount": 7,
            "messagesCount": 42,
            "secretName": "shown-chat-token",
            "lastActivityAt": "2026-01-01T00:00:00Z",
        }
    }
    control_plane.kubectl(
        "-n", ns, "patch", "application", "shown", "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    header, row = control_plane.kubectl("-n", ns, "get", "applications").stdout.splitlines()[:2]
    assert header.split()[:6] == ["NAME", "DISPLAY", "NAME", "STATE", "CHATS", "MESSAGES"]
    assert row.split()[:6] == ["shown", "Shown", "tenant", "Suspended", "7", "42"]
    wide = control_plane.kubectl("-n", ns, "get", "capp", "-o", "wide").stdout
    assert "TOKEN SECRET" in wide and "shown-chat-token" in wide


def test_the_server_takes_webhooks_with_their_defaults_and_refuses_a_repeated_name(
    control_plane: ControlPlane, crd: str, kube_namespace: str
):
    hook = {"name": "orders", "url": "https://hooks.example.com/chat", "secretRef": {"name": "signing"}}
    obj = application("hooked", kube_namespace, webhooks=[hook])
    control_plane.kubectl("create", "-f", "-", stdin=json.dumps(obj))
    stored = control_plane.get_json("-n", kube_namespace, "application", "hooked")["spec"]["webhooks"]
    assert stored == [{**hook, "secretRef": {"name": "signing", "key": "secret"}, "enabled": True}]
    twice = application("twice", kube_namespace, webhooks=[hook, {**hook, "url": "https://other.example.com/"}])
    refused = control_plane.kubectl("create", "-f", "-", stdin=json.dumps(twice), check=False)
    assert refused.returncode != 0 and "Duplicate value" in refused.stderr
    status = {"status": {"webhooks": [{"name": "orders", "state": "failing", "failingSince": "2026-01-01T00:00:00Z"}]}}
    control_plane.kubectl(
        "-n", kube_namespace, "patch", "application", "hooked", "--subresource=status", "--type=merge",
        "-p", json.dumps(status),
    )  # fmt: skip
    read = control_plane.get_json("-n", kube_namespace, "application", "hooked")["status"]["webhooks"]
    assert read == status["status"]["webhooks"]
