"""``/openapi.json`` (the API contract, as this server is configured) and ``/docs`` (it, readable).

The document lives beside the code (``chat_api/openapi.json``); tests check it against the routes the app
really has, validate it, and fuzz the running API from it. It describes a server with an admin key; one running
without (``ADMIN_API_KEY`` unset, the local default) lets anyone list, create and delete applications, so what it
serves says so: :func:`without_admin_key` drops those operations' ``security`` and ``401`` and notes it in their
descriptions. Both are built once, when the app is created; with a key the file is served byte for byte.
The docs page is rendered here from the same document, as plain HTML: no scripts and nothing fetched from
elsewhere, so it works offline and keeps a strict Content-Security-Policy.
"""

from __future__ import annotations

import functools
import html
from pathlib import Path

import falcon
import orjson

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "openapi.json"
METHODS = ("get", "post", "put", "patch", "delete")
DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
code, .path { font-family: ui-monospace, monospace; }
section { border-top: 1px solid #ddd; padding: .6rem 0; }
.method { display: inline-block; min-width: 4.5rem; font-weight: 700; text-transform: uppercase; }
table { border-collapse: collapse; margin: .3rem 0; } td, th { text-align: left; padding: .15rem .8rem .15rem 0; }
.muted { color: #666; }
"""


OPEN_ADMIN_NOTE = (
    "This server runs without an admin key (`ADMIN_API_KEY` is unset): this operation is open to anyone and"
    " needs no `Authorization`."
)


def load_document() -> dict:
    """The OpenAPI document as a dict (as in the repository: the admin operations need the admin key)."""
    return orjson.loads(DOCUMENT_PATH.read_bytes())


def without_admin_key(document: dict) -> dict:
    """The document of a server without an admin key: no security requirement, no 401, and a note, on every
    operation that would otherwise need the key. ``document`` is left as it is."""
    document = orjson.loads(orjson.dumps(document))  # a deep copy
    for item in document["paths"].values():
        for method in METHODS:
            operation = item.get(method)
            if not operation or {"adminKey": []} not in (operation.get("security") or []):
                continue  # not an admin operation (the header form's applicationToken stays)
            operation["security"] = []
            operation["responses"].pop("401", None)
            description = operation.get("description")
            operation["description"] = f"{description} {OPEN_ADMIN_NOTE}" if description else OPEN_ADMIN_NOTE
    return document


def served_document(admin_key_configured: bool) -> dict:
    """The document describing a server configured with (or without) an admin key."""
    document = load_document()
    return document if admin_key_configured else without_admin_key(document)


def _resolve(document: dict, node: dict) -> dict:
    """Follow one local ``$ref`` (the document only uses ``#/components/...``)."""
    ref = node.get("$ref")
    if not ref:
        return node
    target = document
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def render_html(document: dict) -> str:
    """A readable page of every operation: parameters, request body types and responses."""
    esc = html.escape
    info = document["info"]
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{esc(info['title'])} API</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(info['title'])} API <span class=muted>{esc(info['version'])}</span></h1>",
        f"<p>{esc(info.get('description', ''))}</p>",
        '<p>Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI 3).</p>',
    ]
    for path, item in document["paths"].items():
        shared = item.get("parameters", [])
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            security = operation.get("security") or []
            admin = " <span class=muted>(admin key)</span>" if {"adminKey": []} in security else ""
            if {"applicationToken": []} in security:
                admin = " <span class=muted>(token in Authorization)</span>"
            out.append(f"<section><h3><span class=method>{method}</span> <span class=path>{esc(path)}</span></h3>")
            out.append(f"<p>{esc(operation.get('summary', ''))}{admin}</p>")
            if operation.get("description"):
                out.append(f"<p>{esc(operation['description'])}</p>")
            parameters = [_resolve(document, p) for p in [*shared, *operation.get("parameters", [])]]
            if parameters:
                out.append("<table><tr><th>parameter</th><th>in</th><th></th></tr>")
                for p in parameters:
                    required = "" if p.get("required") else " <span class=muted>(optional)</span>"
                    out.append(
                        f"<tr><td><code>{esc(p['name'])}</code>{required}</td><td>{esc(p['in'])}</td>"
                        f"<td>{esc(p.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            if "requestBody" in operation:
                types = ", ".join(f"<code>{esc(t)}</code>" for t in operation["requestBody"]["content"])
                schema = _resolve(document, next(iter(operation["requestBody"]["content"].values()))["schema"])
                out.append(f"<p>Body ({types}): {esc(schema.get('description', ''))}</p>")
            out.append("<table>")
            for status, response in operation["responses"].items():
                response = _resolve(document, response)
                out.append(f"<tr><td><code>{esc(status)}</code></td><td>{esc(response['description'])}</td></tr>")
            out.append("</table></section>")
    for name, item in (document.get("webhooks") or {}).items():  # what this server sends, not a route it has
        for method, operation in item.items():
            out.append(f"<section><h3>webhook <span class=path>{esc(name)}</span> ({esc(method)})</h3>")
            out.append(f"<p>{esc(operation.get('summary', ''))}</p><p>{esc(operation.get('description', ''))}</p>")
            out.append("<table><tr><th>header</th><th></th></tr>")
            for p in operation.get("parameters", []):
                out.append(f"<tr><td><code>{esc(p['name'])}</code></td><td>{esc(p.get('description', ''))}</td></tr>")
            out.append("</table></section>")
    out.append("</body></html>")
    return "".join(out)


@functools.cache
def _served_bytes(admin_key_configured: bool) -> bytes:
    """The served document, once per process and configuration (the file does not change while it runs)."""
    if admin_key_configured:
        return DOCUMENT_PATH.read_bytes()
    return orjson.dumps(without_admin_key(load_document()), option=orjson.OPT_INDENT_2)


@functools.cache
def _docs_page(admin_key_configured: bool) -> bytes:
    """The docs page of the served document, rendered once per process and configuration."""
    return render_html(served_document(admin_key_configured)).encode()


class OpenApiResource:
    """``GET /openapi.json``: the repository's file when an admin key is configured, else :func:`without_admin_key`."""

    def __init__(self, document: bytes | None = None, *, admin_api_key: str | None = None) -> None:
        self.document = document if document is not None else _served_bytes(bool(admin_api_key))

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.document


class DocsResource:
    """``GET /docs``: the document (as :func:`served_document` says for this configuration) as one HTML page,
    rendered once."""

    def __init__(self, document: dict | None = None, *, admin_api_key: str | None = None) -> None:
        self.page = render_html(document).encode() if document is not None else _docs_page(bool(admin_api_key))

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        resp.content_type = falcon.MEDIA_HTML
        resp.set_header("Content-Security-Policy", DOCS_CSP)
        resp.data = self.page
