"""What `helm uninstall` does with the Application objects first (chat_operator.uninstall, the chart's pre-delete
hook), and how the operator honours an orphaned object.

The objects sit in an in-memory fake of the hook's port (:class:`Applications`); the token Secrets in the stand-in
API server, through the operator's real Secret client. Whether kopf puts its finalizer back is asked of kopf's own
registries, as its reactor asks them on every event. The control-plane tests run the same against a real server
with a running operator.
"""

from __future__ import annotations

import copy
import logging

import kopf
from kopf._cogs.structs import bodies, ephemera, patches, references
from kopf._core.intents import causes

from chat_operator import handlers, kube, uninstall
from chat_operator.config import OperatorConfig
from chat_operator.reconciler import Outcome
from tests.operator.conftest import API_URL, application
from tests.operator.fake_apiserver import FakeApiServer

ENV = {"API_INTERNAL_URL": API_URL}


class FakeApplications:
    """Application objects in memory; deleting one runs what its finalizers stand for once ``finalize`` says so."""

    def __init__(self, items: list[dict]) -> None:
        self.items = {(i["metadata"]["namespace"], i["metadata"]["name"]): copy.deepcopy(i) for i in items}
        self.deleted: list[str] = []

    def list(self) -> list[dict]:
        return [copy.deepcopy(i) for i in self.items.values()]

    def patch(self, namespace: str, name: str, patch: dict) -> None:
        meta = self.items[(namespace, name)]["metadata"]
        for key, value in patch["metadata"].items():
            if value is None:
                meta.pop(key, None)
            elif isinstance(value, dict):
                meta[key] = {**meta.get(key, {}), **value}
            else:
                meta[key] = value

    def delete(self, namespace: str, name: str) -> None:
        self.deleted.append(f"{namespace}/{name}")
        self.items[(namespace, name)]["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"

    def finalize(self) -> None:
        """The operator finalizes every object being deleted."""
        self.items = {k: v for k, v in self.items.items() if "deletionTimestamp" not in v["metadata"]}


def _owned(item: dict, extra_finalizers: tuple[str, ...] = ()) -> dict:
    item["metadata"]["finalizers"] = [kube.FINALIZER, *extra_finalizers]
    return item


def test_the_orphan_patch_hands_the_object_to_nobody_in_one_write():
    item = _owned(application("acme"), ("example.com/other",))
    patch = uninstall.orphan_patch(item)
    assert patch == {
        "metadata": {"annotations": {kube.ANNOTATION_ORPHANED: "true"}, "finalizers": ["example.com/other"]}
    }
    assert uninstall.orphan_patch(_owned(application("solo")))["metadata"]["finalizers"] is None


def test_orphaning_keeps_the_objects_and_detaches_their_token_secrets(apiserver: FakeApiServer, secrets):
    items = [_owned(application("orphan-a")), _owned(application("orphan-b"))]
    for item in items:
        apiserver.put(kube.secret_body(item, "t" * 32, API_URL))
    store = FakeApplications(items)
    assert uninstall.run("orphan", store, secrets, timeout=1) == 0
    assert store.deleted == []
    for item in items:
        meta = store.items[("tenants", item["metadata"]["name"])]["metadata"]
        assert "finalizers" not in meta
        assert meta["annotations"][kube.ANNOTATION_ORPHANED] == "true"
        secret = apiserver.get("tenants", kube.secret_name(item["metadata"]["name"]))
        assert "ownerReferences" not in secret["metadata"]  # it outlives the object, as under Retain
        assert secret["metadata"]["annotations"][kube.ANNOTATION_RETAINED] == item["metadata"]["uid"]
        assert apiserver.collect_garbage(item["metadata"]["uid"]) == []


def test_delete_mode_waits_until_the_operator_finalized_every_object():
    store = FakeApplications([_owned(application("del-a")), _owned(application("del-b"))])
    polls = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        store.finalize()

    assert uninstall.delete_and_wait(store, store.list(), timeout=60, clock=lambda: 0.0, sleep=sleep) == []
    assert sorted(store.deleted) == ["tenants/del-a", "tenants/del-b"] and len(polls) == 1


def test_delete_mode_fails_with_the_objects_left_after_the_timeout():
    store = FakeApplications([_owned(application("stuck"))])
    now = iter([0.0, 0.0, 61.0])
    left = uninstall.delete_and_wait(store, store.list(), timeout=60, clock=lambda: next(now), sleep=lambda _: None)
    assert left == ["tenants/stuck"]


def test_an_unknown_mode_is_refused(secrets):
    assert uninstall.run("keep", FakeApplications([]), secrets, timeout=1) == 2


# -- the operator's side: kopf's own finalizer decision ------------------------------------------------------------


def _registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, reconciler=None, config=OperatorConfig.from_env(ENV), ping_database=lambda: True)
    return registry


def _needs_finalizer(registry: kopf.OperatorRegistry, raw: dict) -> bool:
    """What kopf's reactor decides for an object that is not being deleted: keep (or add) its finalizer?"""
    resource = references.Resource(kube.GROUP, kube.VERSION, kube.PLURAL, kind=kube.KIND, namespaced=True)
    common = {
        "logger": logging.getLogger("test"),
        "indices": {},
        "memo": ephemera.Memo(),
        "resource": resource,
        "patch": patches.Patch(),
        "body": bodies.Body(raw),
    }
    spawning = causes.SpawningCause(**common, reset=False)
    changing = causes.ChangingCause(**common, initial=False, reason=causes.Reason.NOOP)
    return registry._spawning.requires_finalizer(spawning) or registry._changing.requires_finalizer(changing)


def test_kopf_keeps_its_finalizer_on_served_objects_and_lets_orphaned_ones_go():
    registry = _registry()
    served = _owned(application("served"))
    assert _needs_finalizer(registry, served)
    orphaned = copy.deepcopy(served)
    orphaned["metadata"]["annotations"] = {kube.ANNOTATION_ORPHANED: "true"}
    assert not _needs_finalizer(registry, orphaned)  # kopf neither adds it back nor waits for it


def test_the_next_operator_to_start_adopts_orphaned_objects_back():
    registry = _registry()
    resumes = [h for h in registry._changing.get_all_handlers() if h.initial]
    by_id = {h.id: h for h in resumes}
    assert by_id["adopt"].annotations == {kube.ANNOTATION_ORPHANED: kopf.PRESENT}
    assert by_id["provision"].annotations == {kube.ANNOTATION_ORPHANED: kopf.ABSENT}
    # Nothing but the adoption touches an orphaned object: not a create, update, deletion or the timer.
    for handler in [*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers()]:
        if handler.id != "adopt":
            assert handler.annotations == {kube.ANNOTATION_ORPHANED: kopf.ABSENT}, handler.id


class ReadyReconciler:
    """Applies any spec successfully (the provisioning itself is tested in test_reconciler.py)."""

    def __init__(self) -> None:
        self.applied: list[str] = []

    def apply(self, resource, retry: int = 0) -> Outcome:
        self.applied.append(resource.name)
        return Outcome(status={"phase": "Ready"})


def test_adopting_removes_the_orphan_mark_and_applies_the_spec():
    reconciler = ReadyReconciler()
    registry = kopf.OperatorRegistry()
    handlers.register(registry, reconciler, OperatorConfig.from_env(ENV), ping_database=lambda: True)
    (adopt,) = [h for h in registry._changing.get_all_handlers() if h.id == "adopt"]
    orphaned = application("back")
    orphaned["metadata"]["annotations"] = {kube.ANNOTATION_ORPHANED: "true"}
    patch = patches.Patch()
    adopt.fn(body=bodies.Body(orphaned), patch=patch, retry=0)
    assert patch["metadata"]["annotations"] == {kube.ANNOTATION_ORPHANED: None}
    assert patch["status"] == {"phase": "Ready"} and reconciler.applied == ["back"]
