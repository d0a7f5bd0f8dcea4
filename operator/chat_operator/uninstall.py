"""`python -m chat_operator.uninstall`: what `helm uninstall` does with the Application objects before the operator
goes (the chart's pre-delete hook), per ``operator.uninstall.applications`` (the ``MODE`` variable):

- ``delete``: delete every Application the operator serves and wait until the operator has finalized each, per its
  deletionPolicy (Retain keeps the tenant's data, Delete removes it);
- ``orphan``: the operator lets go of every Application for good while it still runs: each is annotated
  ``chat-system.io/orphaned`` (which no handler of the operator serves, so kopf does not put its finalizer back)
  in the same patch that removes the finalizer, and its token Secret loses its owner reference, as under Retain,
  so that it outlives the object. The objects and the tenant data stay; an operator that starts later adopts the
  objects back.

``WATCH_NAMESPACES`` (comma-separated; empty: every namespace) and ``TIMEOUT_SECONDS`` as in the chart.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from kubernetes import client, config

from chat_operator import kube

log = logging.getLogger("chat_operator.uninstall")
MODES = ("delete", "orphan")
POLL_SECONDS = 5.0


class Applications(Protocol):
    """The Application objects the operator serves, as far as the uninstall needs them."""

    def list(self) -> list[dict]:
        """Every served Application object."""
        ...

    def patch(self, namespace: str, name: str, patch: dict) -> None:
        """Merge-patch one object."""
        ...

    def delete(self, namespace: str, name: str) -> None:
        """Delete one object (its finalizers then run)."""
        ...


class KubeApplications:
    """:class:`Applications` through the official Kubernetes client."""

    def __init__(self, api: client.CustomObjectsApi, namespaces: Sequence[str]) -> None:
        self.api = api
        self.namespaces = tuple(namespaces)

    def list(self) -> list[dict]:
        """Every Application of the served namespaces (of every namespace when none is named)."""
        args = (kube.GROUP, kube.VERSION)
        if not self.namespaces:
            return self.api.list_cluster_custom_object(*args, kube.PLURAL)["items"]
        return [
            item
            for namespace in self.namespaces
            for item in self.api.list_namespaced_custom_object(*args, namespace, kube.PLURAL)["items"]
        ]

    def patch(self, namespace: str, name: str, patch: dict) -> None:
        """Merge-patch one object (the client sends a merge patch for a dict body)."""
        self.api.patch_namespaced_custom_object(kube.GROUP, kube.VERSION, namespace, kube.PLURAL, name, patch)

    def delete(self, namespace: str, name: str) -> None:
        """Delete one object; the operator's finalizer holds it until deletionPolicy is honoured."""
        self.api.delete_namespaced_custom_object(kube.GROUP, kube.VERSION, namespace, kube.PLURAL, name)


def _label(item: dict) -> str:
    return f"{item['metadata']['namespace']}/{item['metadata']['name']}"


def orphan_patch(item: dict) -> dict:
    """Merge patch that hands an Application over to nobody: the orphan annotation and no operator finalizer, in
    one write, so that a running operator never sees the object without its finalizer yet still served."""
    kept = [f for f in item["metadata"].get("finalizers") or [] if f != kube.FINALIZER]
    return {"metadata": {"annotations": {kube.ANNOTATION_ORPHANED: "true"}, "finalizers": kept or None}}


def orphan(applications: Applications, secrets: kube.KubeSecrets, items: Iterable[dict]) -> None:
    """Let go of every object: annotated and unfinalized, its token Secret detached (it outlives the object)."""
    for item in items:
        meta = item["metadata"]
        applications.patch(meta["namespace"], meta["name"], orphan_patch(item))
        detached = secrets.detach(meta["namespace"], kube.secret_name(meta["name"]), meta["uid"])
        log.info("orphaned %s%s", _label(item), "; its token Secret is kept" if detached else "")


def delete_and_wait(
    applications: Applications,
    items: Iterable[dict],
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Delete every object and wait until the operator has finalized them all; the ones left after ``timeout``."""
    for item in items:
        applications.delete(item["metadata"]["namespace"], item["metadata"]["name"])
    deadline = clock() + timeout
    while left := applications.list():
        if clock() >= deadline:
            return [_label(item) for item in left]
        log.info("waiting for the operator to finalize %d Application object(s)", len(left))
        sleep(POLL_SECONDS)
    return []


def run(mode: str, applications: Applications, secrets: kube.KubeSecrets, timeout: float) -> int:
    """Handle every served Application per ``mode``; the process's exit status."""
    if mode not in MODES:
        log.error("MODE must be one of %s, not %r", ", ".join(MODES), mode)
        return 2
    items = applications.list()
    log.info("%d Application object(s) to %s", len(items), mode)
    if mode == "orphan":
        orphan(applications, secrets, items)
        return 0
    left = delete_and_wait(applications, items, timeout)
    if left:
        log.error(
            "not finalized in %.0fs: %s; see the operator's logs and the objects' Events", timeout, ", ".join(left)
        )
        return 1
    return 0


def main() -> None:
    """Read the hook's environment, talk to the API server as the hook's ServiceAccount, exit with the outcome."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config.load_incluster_config()
    namespaces = [n.strip() for n in os.environ.get("WATCH_NAMESPACES", "").split(",") if n.strip()]
    applications = KubeApplications(client.CustomObjectsApi(), namespaces)
    secrets = kube.KubeSecrets(client.CoreV1Api)
    sys.exit(run(os.environ.get("MODE", ""), applications, secrets, float(os.environ.get("TIMEOUT_SECONDS", 300))))


if __name__ == "__main__":
    main()
