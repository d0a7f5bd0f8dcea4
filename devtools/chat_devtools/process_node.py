"""A node of the loopback control plane whose pods run for real, as local processes — a tiny kubelet.

kwok's simulated nodes make pods Running without running anything. That proves what the API server and the
controllers decide, but not what the processes inside do with what the chart gives them. For the pods that tests
need to run for real — the operator Deployment, the uninstall hook Job — this node plays the kubelet: each pod
scheduled on it (the chart's ``nodeSelector``/``tolerations`` values send it here; the node is tainted so nothing
else lands on it) becomes one process per container, started the way a container runtime would:

- the container's ``command``/``args`` (``python`` is this virtualenv's interpreter; the repository root is the
  working directory, where the image has the same packages installed);
- its environment: ``value``, ``valueFrom`` (``fieldRef``, ``secretKeyRef``, ``configMapKeyRef``) and ``envFrom``,
  plus ``KUBERNETES_SERVICE_HOST``/``PORT`` as the kubelet sets them;
- in a mount namespace of its own (``unshare --mount``, root only), the pod's ServiceAccount token — a TokenRequest
  token bound to the pod, so the chart's RBAC is what the process gets — with ``ca.crt`` and ``namespace`` at
  ``/var/run/secrets/kubernetes.io/serviceaccount``, and ``emptyDir`` volumes at their mount paths;
- the pod's status follows the process: Running and Ready while it runs (probes are not run), restarted after a
  crash under ``restartPolicy: Always``, Succeeded/Failed when it exits otherwise; a deleted pod's process gets
  SIGTERM, SIGKILL after the grace period, then the pod object is removed.

What differs from a real kubelet, knowingly: every pod shares the host's network, so each declared container port is
moved to a free port — the pod's environment values naming it are rewritten to match (the chart passes ports through
the environment); no image is pulled, no resource limit enforced, no probe run; processes run as root; an emptyDir
whose mount would hide the repository or the interpreter (a checkout under /tmp) is not mounted — for /tmp the
process gets TMPDIR pointing to its volume instead.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from chat_devtools.control_plane import ControlPlane, ControlPlaneError
from chat_devtools.ports import free_port
from chat_devtools.processes import ROOT

log = logging.getLogger(__name__)

NODE_LABEL = "chat-system.io/test-node"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunningPod:
    """One pod of this node: its processes and what the kubelet knows of it."""

    namespace: str
    name: str
    uid: str
    spec: dict
    directory: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    phase: str = "Pending"
    deleting_since: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _hides_the_code(mount_path: str) -> bool:
    """Whether a volume mounted at ``mount_path`` would hide the repository or the interpreter (a checkout under
    /tmp, say: the chart mounts an emptyDir there). Such a volume is not mounted; a temporary directory is pointed
    to by TMPDIR instead."""
    target = Path(mount_path)
    return any(path == target or target in path.parents for path in (ROOT, Path(sys.prefix), Path(sys.executable)))


class ProcessNode:
    """Start with :meth:`start`; values that send a pod here: :attr:`node_selector` and :attr:`tolerations`."""

    def __init__(self, plane: ControlPlane, name: str = "process-node") -> None:
        self.plane = plane
        self.name = name
        self.logs = plane.workdir / name
        # Pods' files (tokens, emptyDirs) live outside /tmp: a pod that mounts an emptyDir over /tmp would otherwise
        # hide the sources of its other mounts from itself.
        self.directory = Path(os.environ.get("PROCESS_NODE_ROOT", "/run/chat-system-process-nodes")) / name
        self.pods: dict[str, RunningPod] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def node_selector(self) -> dict[str, str]:
        return {NODE_LABEL: self.name}

    @property
    def tolerations(self) -> list[dict]:
        return [{"key": NODE_LABEL, "operator": "Equal", "value": self.name, "effect": "NoSchedule"}]

    # -- life of the node ----------------------------------------------------------------------------------------
    def start(self) -> ProcessNode:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.plane.apply(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": self.name, "labels": {NODE_LABEL: self.name, "kubernetes.io/os": "linux"}},
                "spec": {"taints": [{"key": NODE_LABEL, "value": self.name, "effect": "NoSchedule"}]},
            }
        )
        self._heartbeat()
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop every process of the node and the node's loop (the Node object stays, NotReady in time)."""
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        for pod in list(self.pods.values()):
            self._terminate(pod, grace=5)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _heartbeat(self) -> None:
        now = _now()
        status = {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "processes of the host",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "50"},
                "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "50"},
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            }
        }
        self.plane.kubectl(
            "patch", "node", self.name, "--subresource=status", "--type=merge", "-p", json.dumps(status), check=False
        )

    def _run(self) -> None:
        beat = time.monotonic()
        while not self._stop.wait(0.5):
            try:
                if time.monotonic() - beat > 10:
                    self._heartbeat()
                    beat = time.monotonic()
                self._sync()
            except (ControlPlaneError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                log.warning("process node %s: %s", self.name, exc)

    # -- one turn: bring the processes in line with the pods bound to this node --------------------------------
    def _sync(self) -> None:
        listed = self.plane.get_json("pods", "-A", f"--field-selector=spec.nodeName={self.name}")["items"]
        seen = set()
        for obj in listed:
            meta = obj["metadata"]
            key = f"{meta['namespace']}/{meta['name']}"
            seen.add(key)
            pod = self.pods.get(key)
            if pod is not None and pod.uid != meta["uid"]:  # same name, a new pod (a StatefulSet's, say)
                self._terminate(pod, grace=0)
                pod = None
            if meta.get("deletionTimestamp"):
                if pod is None:
                    self._remove(meta)
                else:
                    self._delete(pod, obj)
                continue
            if pod is None:
                if obj["status"].get("phase") in ("Succeeded", "Failed"):
                    continue
                pod = self._admit(obj)
            self._supervise(pod)
        for key in set(self.pods) - seen:  # removed by someone else (force delete)
            self._terminate(self.pods.pop(key), grace=0)

    def _admit(self, obj: dict) -> RunningPod:
        meta, spec = obj["metadata"], obj["spec"]
        pod = RunningPod(meta["namespace"], meta["name"], meta["uid"], spec, self.directory / meta["uid"])
        pod.directory.mkdir(parents=True, exist_ok=True)
        self.pods[pod.key] = pod
        try:
            for container in spec["containers"]:
                self._start_container(pod, obj, container)
        except (ControlPlaneError, KeyError, OSError) as exc:
            log.error("cannot start %s: %s", pod.key, exc)
            pod.phase = "Failed"
            self._report(pod, message=str(exc))
            return pod
        pod.phase = "Running"
        self._report(pod)
        return pod

    def _supervise(self, pod: RunningPod) -> None:
        if pod.phase not in ("Running",):
            return
        changed = False
        exited = {name: p.returncode for name, p in pod.processes.items() if p.poll() is not None}
        policy = pod.spec.get("restartPolicy", "Always")
        for name, code in exited.items():
            if policy == "Always" or (policy == "OnFailure" and code != 0):
                container = next(c for c in pod.spec["containers"] if c["name"] == name)
                pod.restarts[name] = pod.restarts.get(name, 0) + 1
                obj = self.plane.get_json("pod", pod.name, "-n", pod.namespace)
                self._start_container(pod, obj, container)
                changed = True
        if policy != "Always" and len(exited) == len(pod.processes):
            pod.phase = "Succeeded" if all(code == 0 for code in exited.values()) else "Failed"
            changed = True
        if changed:
            self._report(pod)

    def _delete(self, pod: RunningPod, obj: dict) -> None:
        grace = obj["metadata"].get("deletionGracePeriodSeconds", 30)
        self._terminate(pod, grace=grace)
        self.pods.pop(pod.key, None)
        self._remove(obj["metadata"])

    def _remove(self, meta: dict) -> None:
        self.plane.kubectl(
            "delete",
            "pod",
            meta["name"],
            "-n",
            meta["namespace"],
            "--grace-period=0",
            "--force",
            "--wait=false",
            check=False,
        )

    def _terminate(self, pod: RunningPod, grace: float) -> None:
        for process in pod.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in pod.processes.values():
            try:
                process.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def kill(self, namespace: str, name: str, container: str | None = None) -> None:
        """SIGKILL a pod's process (a crash); under ``restartPolicy: Always`` the node restarts it."""
        pod = self.pods[f"{namespace}/{name}"]
        for cname, process in pod.processes.items():
            if container in (None, cname):
                process.kill()

    # -- starting one container ----------------------------------------------------------------------------------
    def _start_container(self, pod: RunningPod, obj: dict, container: dict) -> None:
        env = self._environment(pod, obj, container)
        mounts = self._volumes(pod, obj, container)
        argv = [*container.get("command", []), *container.get("args", [])]
        if not argv:
            raise ControlPlaneError(f"{pod.key}: container {container['name']} has no command (images are not run)")
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        script = "".join(
            f"mkdir -p {shlex.quote(target)} && mount --bind {shlex.quote(str(source))} {shlex.quote(target)} && "
            for source, target in mounts
        )
        wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{script}exec "$@"', "sh", *argv]
        log_file = (self.logs / f"{pod.namespace}_{pod.name}_{container['name']}.log").open("ab")
        pod.processes[container["name"]] = subprocess.Popen(
            wrapped, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )

    def _environment(self, pod: RunningPod, obj: dict, container: dict) -> dict[str, str]:
        meta = obj["metadata"]
        host = self.plane.url.removeprefix("https://")
        env = {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(pod.directory),
            "HOSTNAME": pod.name,
            "KUBERNETES_SERVICE_HOST": host.rsplit(":", 1)[0],
            "KUBERNETES_SERVICE_PORT": host.rsplit(":", 1)[1],
            "PYTHONUNBUFFERED": "1",
        }
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            for kind, ref in (("secret", source.get("secretRef")), ("configmap", source.get("configMapRef"))):
                if ref:
                    env.update({prefix + k: v for k, v in self._data(kind, pod.namespace, ref).items()})
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            elif "valueFrom" in var:
                value = self._value_from(pod, meta, var["valueFrom"])
                if value is not None:
                    env[var["name"]] = value
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"] in ("/tmp", "/var/tmp") and _hides_the_code(mount["mountPath"]):
                env["TMPDIR"] = str(pod.directory / "volumes" / mount["name"])
        return self._move_ports(container, env)

    @staticmethod
    def _move_ports(container: dict, env: dict[str, str]) -> dict[str, str]:
        """Each declared container port becomes a free host port, in every environment value that names it."""
        for port in container.get("ports", []):
            moved = str(free_port())
            env = {k: v.replace(str(port["containerPort"]), moved) for k, v in env.items()}
        return env

    def _value_from(self, pod: RunningPod, meta: dict, source: dict) -> str | None:
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            fields = {
                "metadata.name": meta["name"],
                "metadata.namespace": meta["namespace"],
                "metadata.uid": meta["uid"],
                "spec.nodeName": self.name,
                "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
                "status.podIP": "127.0.0.1",
                "status.hostIP": "127.0.0.1",
            }
            return fields.get(path)
        for kind, key in (("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")):
            if key in source:
                ref = source[key]
                value = self._data(kind, pod.namespace, ref).get(ref["key"])
                if value is None and not ref.get("optional"):
                    raise ControlPlaneError(f"{kind} {ref['name']} has no key {ref['key']}")
                return value
        return None

    def _data(self, kind: str, namespace: str, ref: dict) -> dict[str, str]:
        result = self.plane.kubectl("get", kind, ref["name"], "-n", namespace, "-o", "json", check=False)
        if result.returncode != 0:
            if ref.get("optional"):
                return {}
            raise ControlPlaneError(f"{kind} {namespace}/{ref['name']} not found")
        obj = json.loads(result.stdout)
        if kind == "secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def _volumes(self, pod: RunningPod, obj: dict, container: dict) -> list[tuple[Path, str]]:
        """(host directory, mount path) pairs: emptyDirs, and the ServiceAccount token when the pod mounts one."""
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        mounts: list[tuple[Path, str]] = []
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if "emptyDir" in volume:
                source = pod.directory / "volumes" / mount["name"]
                source.mkdir(parents=True, exist_ok=True)
                if _hides_the_code(mount["mountPath"]):
                    continue  # the directory stays as it is on the host; _environment points TMPDIR at `source`
                mounts.append((source, mount["mountPath"]))
            elif mount["mountPath"] == SERVICE_ACCOUNT_DIR:
                mounts.append((self._service_account(pod, obj), SERVICE_ACCOUNT_DIR))
        return mounts

    def _service_account(self, pod: RunningPod, obj: dict) -> Path:
        directory = pod.directory / "serviceaccount"
        directory.mkdir(parents=True, exist_ok=True)
        account = pod.spec.get("serviceAccountName", "default")
        token = self.plane.kubectl(
            "create",
            "token",
            account,
            "-n",
            pod.namespace,
            "--duration=3600s",
            "--bound-object-kind=Pod",
            f"--bound-object-name={pod.name}",
            f"--bound-object-uid={pod.uid}",
        ).stdout.strip()
        (directory / "token").write_text(token)
        (directory / "namespace").write_text(pod.namespace)
        (directory / "ca.crt").write_bytes(self.plane.certificates.serving_ca.cert.read_bytes())
        return directory

    # -- status ----------------------------------------------------------------------------------------------------
    def _report(self, pod: RunningPod, message: str = "") -> None:
        now = _now()
        running = pod.phase == "Running"
        statuses = []
        for container in pod.spec["containers"]:
            process = pod.processes.get(container["name"])
            if process is not None and process.poll() is not None:
                state = {"terminated": {"exitCode": process.returncode, "finishedAt": now, "startedAt": now}}
            else:
                state = {"running": {"startedAt": now}}
            statuses.append(
                {
                    "name": container["name"],
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": running and "running" in state,
                    "started": "running" in state,
                    "restartCount": pod.restarts.get(container["name"], 0),
                    "state": state,
                }
            )
        ready = "True" if running else "False"
        status = {
            "status": {
                "phase": pod.phase,
                "message": message,
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": now,
                "conditions": [
                    {"type": t, "status": s, "lastTransitionTime": now}
                    for t, s in (
                        ("PodScheduled", "True"),
                        ("Initialized", "True"),
                        ("ContainersReady", ready),
                        ("Ready", ready),
                    )
                ],
                "containerStatuses": statuses,
            }
        }
        self.plane.kubectl(
            "patch",
            "pod",
            pod.name,
            "-n",
            pod.namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(status),
            check=False,
        )
