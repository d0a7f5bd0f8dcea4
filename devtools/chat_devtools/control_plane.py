"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller manager, scheduler and kwok nodes.

What controller-runtime's envtest starts (etcd + kube-apiserver with certificates made per run), plus the two
controllers that turn Deployments, StatefulSets and Jobs into pods (kube-controller-manager, kube-scheduler) and
kwok, which plays the kubelet of simulated nodes: scheduled pods become Running and Ready, Job pods Succeeded. No
container runs — images are never pulled — so what this proves is what the API server and the controllers decide:
schema and CEL validation, admission, RBAC, ownership and garbage collection, hook ordering, names and labels
within their limits, workloads that get pods. A PersistentVolumeClaim is bound by a small provisioner thread here
(no storage exists), the way a cluster's default StorageClass would.

Binaries: each is looked up in ``KUBEBUILDER_ASSETS`` first (the envtest convention: a developer with envtest
binaries, or a kind node's, skips the build), then in the cache that ``devtools/control-plane/build.sh`` fills from
the Go module proxy (``make control-plane``); a missing one is built there (first time ~20 minutes on 2 cores).

    with ControlPlane.start(workdir) as cp:
        cp.kubectl("get", "nodes")
        cp.helm("install", ...)
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3

from chat_devtools.ports import free_port
from chat_devtools.processes import ROOT, Process
from chat_devtools.tinyca import KeyPair, TinyCA, signing_key_pair

log = logging.getLogger(__name__)

BUILD_SCRIPT = ROOT / "devtools" / "control-plane" / "build.sh"
VERSIONS_FILE = ROOT / "devtools" / "control-plane" / "versions.env"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR_GATEWAY = "10.244.0.1/16"  # kwok takes the first pod IP with the prefix
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
STORAGE_CLASS = "standard"
STORAGE_PROVISIONER = "loopback.chat-system.io/provisioner"


class ControlPlaneError(RuntimeError):
    """A component did not start, or a command against the control plane failed."""


def versions() -> dict[str, str]:
    """The pinned versions (devtools/control-plane/versions.env) as a dict."""
    pinned = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pinned[key] = value.strip('"')
    return pinned


def binary_dir() -> Path:
    """Where the build script keeps (or will keep) the binaries of the pinned release."""
    cache = os.environ.get("CONTROL_PLANE_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chat-system" / "control-plane"
    )
    return Path(cache) / f"k8s-{versions()['KUBERNETES_VERSION']}" / "bin"


def find_binaries(build: bool = True) -> dict[str, Path]:
    """Path of every binary: ``KUBEBUILDER_ASSETS`` first, then the build cache (built when missing and ``build``)."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    found: dict[str, Path] = {}
    for name in BINARIES:
        for directory in filter(None, (assets, str(binary_dir()))):
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found[name] = candidate
                break
    missing = [name for name in BINARIES if name not in found]
    if missing and build:
        # Progress goes to stderr (the terminal or the CI log); the build prints its bin directory last.
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
        return find_binaries(build=False)
    if missing:
        raise ControlPlaneError(f"control-plane binaries missing: {', '.join(missing)} (run `make control-plane`)")
    return found


def _wait(what: str, ready, timeout: float, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.popen is not None and process.popen.poll() is not None:
            raise ControlPlaneError(f"{what} exited with {process.popen.returncode}; see {process.log_path}")
        with contextlib.suppress(requests.RequestException, OSError):
            if ready():
                return
        time.sleep(0.2)
    where = f"; see {process.log_path}" if process else ""
    raise ControlPlaneError(f"{what} not ready after {timeout:.0f}s{where}")


@dataclass
class Certificates:
    """Every key and certificate of one control plane run."""

    serving_ca: KeyPair
    serving: KeyPair
    client_ca: KeyPair
    admin: KeyPair
    service_accounts: KeyPair

    @classmethod
    def make(cls, directory: Path) -> Certificates:
        directory.mkdir(parents=True, exist_ok=True)
        serving_ca, client_ca = TinyCA("serving-ca"), TinyCA("client-ca")
        hosts = ("localhost", "127.0.0.1", "10.0.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
        return cls(
            serving_ca=serving_ca.save(directory, "serving-ca"),
            serving=serving_ca.issue(directory, "apiserver", common_name="kube-apiserver", hosts=hosts),
            client_ca=client_ca.save(directory, "client-ca"),
            admin=client_ca.issue(
                directory, "admin", common_name="admin", organizations=("system:masters",), client=True
            ),
            service_accounts=signing_key_pair(directory, "service-accounts"),
        )


@dataclass
class ControlPlane:
    """A running control plane; :meth:`start` makes one, :meth:`stop` (or leaving the ``with``) ends it."""

    workdir: Path
    binaries: dict[str, Path]
    certificates: Certificates
    url: str = ""
    kubeconfig: Path = field(default=Path())
    processes: list[Process] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    # -- start and stop ------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, workdir: Path, *, nodes: int = 3, timeout: float = 120) -> ControlPlane:
        """Start every component on free loopback ports, with ``nodes`` simulated nodes; wait until all serve."""
        workdir.mkdir(parents=True, exist_ok=True)
        plane = cls(workdir, find_binaries(), Certificates.make(workdir / "pki"))
        try:
            plane._start_etcd(timeout)
            plane._start_apiserver(timeout)
            plane._start_controllers(timeout)
            plane._add_nodes(nodes)
            plane._add_storage()
        except BaseException:
            plane.stop()
            raise
        return plane

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every component, newest first (the API server outlives its clients, etcd outlives the server)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for process in reversed(self.processes):
            process.stop(timeout=15)

    def _process(self, name: str, argv: list[str]) -> Process:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)}
        process = Process(name, [str(self.binaries[argv[0]]), *argv[1:]], env, self.workdir).start()
        self.processes.append(process)
        return process

    def _start_etcd(self, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        process = self._process(
            "etcd",
            [
                "etcd",
                "--name=control-plane",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=control-plane=http://127.0.0.1:{peer}",
                # Tests throw the data away: fsync only slows them (envtest passes the same).
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        _wait("etcd", lambda: requests.get(f"{self.etcd_url}/health", timeout=2).ok, timeout, process)

    def _start_apiserver(self, timeout: float) -> None:
        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        c = self.certificates
        process = self._process(
            "kube-apiserver",
            [
                "kube-apiserver",
                f"--etcd-servers={self.etcd_url}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                f"--tls-cert-file={c.serving.cert}",
                f"--tls-private-key-file={c.serving.key}",
                f"--client-ca-file={c.client_ca.cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={self.url}",
                f"--service-account-key-file={c.service_accounts.cert}",
                f"--service-account-signing-key-file={c.service_accounts.key}",
                f"--cert-dir={self.workdir / 'apiserver'}",
                "--enable-admission-plugins=NodeRestriction",
                "--v=1",
            ],
        )
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.kubeconfig.write_text(self.kubeconfig_text(c.admin))
        session = self.http()
        _wait("kube-apiserver", lambda: session.get(f"{self.url}/readyz", timeout=5).ok, timeout, process)

    def _start_controllers(self, timeout: float) -> None:
        c = self.certificates
        kube = str(self.kubeconfig)
        delegated = [
            f"--kubeconfig={kube}",
            f"--authentication-kubeconfig={kube}",
            f"--authorization-kubeconfig={kube}",
        ]
        manager_port, scheduler_port, kwok_port = free_port(), free_port(), free_port()
        manager = self._process(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                *delegated,
                "--bind-address=127.0.0.1",
                f"--secure-port={manager_port}",
                "--leader-elect=false",
                f"--root-ca-file={c.serving_ca.cert}",
                f"--service-account-private-key-file={c.service_accounts.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                # Namespaces, garbage collection and Jobs go faster: tests delete and wait a lot.
                "--concurrent-gc-syncs=40",
                "--concurrent-namespace-syncs=20",
                "--v=1",
            ],
        )
        scheduler = self._process(
            "kube-scheduler",
            [
                "kube-scheduler",
                *delegated,
                "--bind-address=127.0.0.1",
                f"--secure-port={scheduler_port}",
                "--leader-elect=false",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                "--v=1",
            ],
        )
        kwok = self._process(
            "kwok",
            [
                "kwok",
                f"--kubeconfig={kube}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                f"--cidr={POD_CIDR_GATEWAY}",
                "--node-ip=10.255.0.1",
                f"--server-address=127.0.0.1:{kwok_port}",
                "--node-lease-duration-seconds=40",
                f"--config={self._kwok_stages()}",
            ],
        )
        insecure = requests.Session()
        insecure.trust_env = False
        insecure.verify = False  # the components' own self-signed serving certificates: only health is read
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        for process, port in ((manager, manager_port), (scheduler, scheduler_port)):
            url = f"https://127.0.0.1:{port}/healthz"
            _wait(process.name, lambda url=url: insecure.get(url, timeout=2).ok, timeout, process)
        _wait("kwok", lambda: kwok.popen.poll() is None, 2, kwok)
        # The controller manager makes each namespace's `default` ServiceAccount: pods need it to be admitted.
        _wait(
            "default service account",
            lambda: self.kubectl("get", "sa", "default", check=False).returncode == 0,
            timeout,
        )

    def _kwok_stages(self) -> Path:
        """kwok's own "fast" pod stages (ready, complete, delete), plus one that completes bare pods that do not
        restart — `helm test` pods — which kwok's stages leave Running for ever (they complete only Jobs' pods)."""
        module = subprocess.run(
            ["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@{versions()['KWOK_VERSION']}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        fast = Path(json.loads(module.stdout)["Dir"]) / "kustomize" / "stage" / "pod" / "fast"
        documents = [(fast / f"pod-{stage}.yaml").read_text() for stage in ("ready", "complete", "delete")]
        bare = documents[1].replace("name: pod-complete", "name: pod-complete-bare")
        bare = bare.replace(
            "    - key: '.metadata.ownerReferences.[].kind'\n      operator: 'In'\n      values:\n      - 'Job'\n",
            "    - key: '.metadata.ownerReferences'\n      operator: 'DoesNotExist'\n"
            "    - key: '.spec.restartPolicy'\n      operator: 'In'\n"
            "      values:\n      - 'Never'\n      - 'OnFailure'\n",
        )
        if bare == documents[1].replace("name: pod-complete", "name: pod-complete-bare"):
            raise ControlPlaneError(f"kwok's pod-complete stage changed shape: adapt _kwok_stages ({fast})")
        path = self.workdir / "kwok-stages.yaml"
        path.write_text("\n---\n".join([*documents, bare]))
        return path

    def _add_nodes(self, count: int) -> None:
        for index in range(count):
            self.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": f"kwok-node-{index}",
                        "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                        "labels": {
                            "kubernetes.io/hostname": f"kwok-node-{index}",
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "topology.kubernetes.io/zone": f"zone-{index % 3}",
                            "type": "kwok",
                        },
                    },
                    "status": {
                        "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "250", "ephemeral-storage": "1Ti"},
                        "capacity": {"cpu": "32", "memory": "256Gi", "pods": "250", "ephemeral-storage": "1Ti"},
                    },
                }
            )
        _wait(
            "kwok nodes Ready",
            lambda: all(
                any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
                for n in self.get_json("nodes")["items"]
            ),
            60,
        )

    def _add_storage(self) -> None:
        self.apply(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": STORAGE_CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": STORAGE_PROVISIONER,
                "volumeBindingMode": "Immediate",
                "reclaimPolicy": "Delete",
            }
        )
        thread = threading.Thread(target=self._provision_volumes, name="pv-provisioner", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _provision_volumes(self) -> None:
        """Bind every pending claim of the default class to a new volume made for it (a provisioner's job)."""
        made: set[str] = set()
        while not self._stop.wait(0.5):
            result = self.kubectl("get", "pvc", "-A", "-o", "json", check=False, timeout=20)
            if result.returncode != 0:
                continue
            for claim in json.loads(result.stdout)["items"]:
                meta, spec = claim["metadata"], claim["spec"]
                if claim.get("status", {}).get("phase") != "Pending" or meta["uid"] in made:
                    continue
                if spec.get("storageClassName", STORAGE_CLASS) != STORAGE_CLASS:
                    continue
                volume = {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": f"pv-{meta['uid']}"},
                    "spec": {
                        "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                        "accessModes": spec["accessModes"],
                        "persistentVolumeReclaimPolicy": "Delete",
                        "storageClassName": STORAGE_CLASS,
                        "hostPath": {"path": f"/tmp/kwok-volumes/{meta['uid']}"},
                        "claimRef": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                    },
                }
                if self.apply(volume, check=False).returncode == 0:
                    made.add(meta["uid"])

    # -- clients -------------------------------------------------------------------------------------------------
    def kubeconfig_text(self, user: KeyPair | None = None, token: str | None = None, name: str = "admin") -> str:
        """A kubeconfig for this control plane, as a client certificate's owner or a bearer token's."""
        ca = base64.b64encode(self.certificates.serving_ca.cert.read_bytes()).decode()
        credentials: dict[str, str] = {}
        if token is not None:
            credentials["token"] = token
        elif user is not None:
            credentials["client-certificate-data"] = base64.b64encode(user.cert.read_bytes()).decode()
            credentials["client-key-data"] = base64.b64encode(user.key.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "loopback", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": name, "user": credentials}],
            "contexts": [{"name": name, "context": {"cluster": "loopback", "user": name}}],
            "current-context": name,
        }
        return json.dumps(config, indent=2)

    def kubeconfig_for_token(self, token: str, name: str) -> Path:
        """Write a kubeconfig that authenticates with ``token`` (e.g. a ServiceAccount's TokenRequest token)."""
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(self.kubeconfig_text(token=token, name=name))
        path.chmod(0o600)
        return path

    def http(self) -> requests.Session:
        """A requests session authenticated as the cluster admin."""
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override the verify below
        session.verify = str(self.certificates.serving_ca.cert)
        session.cert = (str(self.certificates.admin.cert), str(self.certificates.admin.key))
        return session

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """Environment for a client process: KUBECONFIG, and helm's caches inside the work directory."""
        return {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
        }

    def _run(self, tool: str, args: tuple[str, ...], stdin: str | None, check: bool, timeout: float, kubeconfig):
        result = subprocess.run(
            [str(self.binaries[tool]), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(kubeconfig),
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"{tool} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120, kubeconfig=None
    ) -> subprocess.CompletedProcess:
        """Run this release's kubectl against the control plane."""
        return self._run("kubectl", args, stdin, check, timeout, kubeconfig)

    def helm(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 600, kubeconfig=None
    ) -> subprocess.CompletedProcess:
        """Run the real helm binary against the control plane."""
        return self._run("helm", args, stdin, check, timeout, kubeconfig)

    def apply(self, obj: dict, *, check: bool = True, server_side: bool = True) -> subprocess.CompletedProcess:
        """Create or update one object (server-side apply: large CRDs exceed client-side apply's annotation)."""
        args = ["apply", "--server-side", "--force-conflicts"] if server_side else ["apply"]
        return self.kubectl(*args, "-f", "-", stdin=json.dumps(obj), check=check)

    def get_json(self, *args: str) -> dict:
        """``kubectl get ... -o json`` parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def create_token(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A TokenRequest token of a ServiceAccount (what a pod mounting that account would hold)."""
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={seconds}s"
        ).stdout.strip()

    def wait_for(self, what: str, predicate, timeout: float = 120, interval: float = 0.5):
        """Poll ``predicate`` until it returns something truthy; that value is returned."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
            except (ControlPlaneError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(interval)
        raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")

    @contextlib.contextmanager
    def namespace(self, name: str) -> Iterator[str]:
        """A namespace for one test, deleted afterwards (without waiting for its contents to go)."""
        self.kubectl("create", "namespace", name)
        try:
            yield name
        finally:
            self.kubectl("delete", "namespace", name, "--wait=false", check=False)
