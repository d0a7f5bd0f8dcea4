"""A stand-in for the Kubernetes API server's Secret endpoints, served over real HTTP.

There is no API server on these machines; this lets the operator's real Kubernetes client code (request
paths, content types, optimistic concurrency, error handling) run against something that answers like one:
get, create (409 when it exists), merge-patch (409 on a stale resourceVersion), and owner-reference garbage
collection on demand. Everything else answers 405.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/?]+))?(?:\?.*)?$")


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeApiServer:
    """Secrets in memory, behind an HTTP server on a free local port."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, content type
        self.fail_next: list[tuple[str, int]] = []  # (method, status) to answer once instead of serving
        self.lock = threading.Lock()
        self._versions = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the fake API server."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeApiServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def put(self, secret: dict) -> dict:
        """Store a Secret as if someone else had created it."""
        meta = secret["metadata"]
        stored = merge_patch(secret, {"metadata": {"uid": str(uuid.uuid4())}})
        with self.lock:
            stored["metadata"]["resourceVersion"] = str(next(self._versions))
            self.secrets[(meta["namespace"], meta["name"])] = stored
        return stored

    def get(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            secret = self.secrets.get((namespace, name))
            return copy.deepcopy(secret) if secret else None

    def delete(self, namespace: str, name: str) -> None:
        with self.lock:
            self.secrets.pop((namespace, name), None)

    def collect_garbage(self, owner_uid: str) -> list[str]:
        """Delete what the garbage collector would once the owner is gone; returns the deleted names."""
        with self.lock:
            doomed = [
                key
                for key, secret in self.secrets.items()
                if any(ref.get("uid") == owner_uid for ref in secret["metadata"].get("ownerReferences") or [])
            ]
            for key in doomed:
                del self.secrets[key]
        return [name for _, name in doomed]

    # -- HTTP -----------------------------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                     "message": message, "code": code},
                )  # fmt: skip

            def _body(self) -> object:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"null")

            def _route(self, method: str) -> None:
                fake.requests.append((method, self.path, self.headers.get("Content-Type")))
                match = SECRET_PATH.match(self.path)
                if not match:
                    return self._status(404, "NotFound", f"no route {self.path}")
                with fake.lock:
                    for i, (failing_method, code) in enumerate(fake.fail_next):
                        if failing_method == method:
                            del fake.fail_next[i]
                            return self._status(code, "InternalError", "injected failure")
                namespace, name = match["ns"], match["name"]
                if method == "GET" and name:
                    return self._get(namespace, name)
                if method == "POST" and not name:
                    return self._create(namespace, self._body())
                if method == "PATCH" and name:
                    return self._patch(namespace, name, self._body())
                return self._status(405, "MethodNotAllowed", f"{method} {self.path}")

            def _get(self, namespace: str, name: str) -> None:
                secret = fake.get(namespace, name)
                if secret is None:
                    return self._status(404, "NotFound", f'secrets "{name}" not found')
                self._send(200, secret)

            def _create(self, namespace: str, body: dict) -> None:
                meta = body.get("metadata", {})
                if body.get("kind") != "Secret" or meta.get("namespace", namespace) != namespace:
                    return self._status(400, "BadRequest", "not a Secret of this namespace")
                with fake.lock:
                    if (namespace, meta["name"]) in fake.secrets:
                        return self._status(409, "AlreadyExists", f'secrets "{meta["name"]}" already exists')
                    stored = copy.deepcopy(body)
                    stored["metadata"].update(
                        namespace=namespace, uid=str(uuid.uuid4()), resourceVersion=str(next(fake._versions))
                    )
                    fake.secrets[(namespace, meta["name"])] = stored
                self._send(201, stored)

            def _patch(self, namespace: str, name: str, patch: dict) -> None:
                if self.headers.get("Content-Type") != "application/merge-patch+json":
                    return self._status(415, "UnsupportedMediaType", "the fake takes merge patches only")
                with fake.lock:
                    current = fake.secrets.get((namespace, name))
                    if current is None:
                        return self._status(404, "NotFound", f'secrets "{name}" not found')
                    wanted = (patch.get("metadata") or {}).get("resourceVersion")
                    if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
                        return self._status(409, "Conflict", "the object has been modified")
                    patched = merge_patch(current, patch)
                    if patched != current:  # as the API server: a patch that changes nothing keeps the version
                        patched["metadata"]["resourceVersion"] = str(next(fake._versions))
                    fake.secrets[(namespace, name)] = patched
                self._send(200, patched)

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PATCH(self) -> None:
                self._route("PATCH")

            def do_PUT(self) -> None:
                self._route("PUT")

            def do_DELETE(self) -> None:
                self._route("DELETE")

        return Handler
