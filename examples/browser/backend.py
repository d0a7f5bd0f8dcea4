"""A tenant's backend in miniature: serves the example page and mints stream tickets with the tenant's token.

The token stays here, on the server; the browser only ever gets a ticket that reads one chat's live stream for a
few minutes. Copy the idea into your own backend (check first that the signed-in user may read that chat).

    CHAT_API_URL=http://127.0.0.1:8080 CHAT_API_TOKEN=<token> PORT=8000 python examples/browser/backend.py
    # then open http://127.0.0.1:8000/?chat=1 (the API must allow this origin: CORS_ALLOWED_ORIGINS)

Only the standard library: no build step, nothing to install.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
API_URL = os.environ.get("CHAT_API_URL", "http://127.0.0.1:8080").rstrip("/")
TOKEN = os.environ.get("CHAT_API_TOKEN", "")


def mint_ticket(chat: int) -> tuple[int, dict]:
    """Ask the chat API for a stream ticket for ``chat`` (the token in a header, never in a URL)."""
    request = urllib.request.Request(
        f"{API_URL}/application/chats/{chat}/stream-tickets",
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Length": "0"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            minted = json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": f"the chat API answered {exc.code}"}
    except OSError:
        return 503, {"error": "the chat API is unreachable; try again"}
    # The page needs only where to connect: the API's URL with the ticket, and until when it opens a stream.
    return 200, {"stream_url": API_URL + minted["stream_path"], "expires_at": minted["expires_at"]}


class Handler(SimpleHTTPRequestHandler):
    """``GET /ticket?chat=n`` → ``{stream_url, expires_at}``; anything else: the files of this folder."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, directory=str(HERE), **kwargs)

    def do_GET(self) -> None:
        """A ticket for ``/ticket?chat=n``; a file of this folder otherwise."""
        url = urlsplit(self.path)
        if url.path != "/ticket":
            return super().do_GET()
        chat = parse_qs(url.query).get("chat", [""])[0]
        if not chat.isdigit():
            return self._json(400, {"error": "chat must be a number"})
        # A real backend checks here that its signed-in user may read this chat.
        status, body = mint_ticket(int(chat))
        return self._json(status, body)

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        """Quiet: no line per request."""


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    print(f"example backend on http://127.0.0.1:{port}/ (chat API {API_URL})", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
