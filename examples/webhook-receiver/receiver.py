"""A tenant's webhook receiver: verifies each delivery with the Standard Webhooks library, then handles it once.

Copy this into your backend (or read it for the three rules, whatever your language):

1. **Verify before anything else**, with a published Standard Webhooks library (here ``standardwebhooks`` from PyPI;
   the same exists for Node, Go, Java, Ruby, PHP, Rust, C#…) and the endpoint's ``whsec_…`` secret as the system gave
   it. It checks the HMAC over ``webhook-id.webhook-timestamp.body``, accepts either signature while a secret rotates,
   and refuses timestamps more than 5 minutes away (replays). Answer 401 to what does not verify.
2. **Deduplicate by ``webhook-id``**: delivery is at least once — after a crash, a timeout or a replay the same event
   comes again with the same id. Here a set in memory; in production a unique key in your database, written in the
   same transaction as the work the event causes.
3. **Answer 2xx fast**, then work: the dispatcher waits at most 10 s and retries anything else (5xx, 408, 429 with
   ``Retry-After``, timeouts) on a schedule of about a day; ``410 Gone`` disables the endpoint. A chat's events come
   in order: the next one of a chat waits until this one is answered.

Run: ``WEBHOOK_SECRET=whsec_… python examples/webhook-receiver/receiver.py 8000`` and register
``https://<your host>/webhooks`` (behind your TLS terminator) as the endpoint's URL.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

seen: set[str] = set()  # webhook-ids handled (rule 2)


def handle(event: dict) -> None:
    """Your work. ``event["data"]`` is the event as ``GET /applications/{token}/events`` shows it."""
    data = event["data"]
    where = f"chat {data['chat_number']}" + (f" message {data['message_number']}" if "message_number" in data else "")
    print(f"{event['type']} {where}: {json.dumps(data['resource'])}", flush=True)


class Receiver(BaseHTTPRequestHandler):
    """POST /webhooks: verify, deduplicate, answer, handle."""

    verifier: Webhook

    def do_POST(self) -> None:
        """A delivery: verify (401 if not), answer 204, handle it unless seen."""
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            event = self.verifier.verify(body, dict(self.headers))  # rule 1 (the library lowercases the names)
        except WebhookVerificationError:
            self.send_response(401)
            self.end_headers()
            return
        message_id = self.headers["webhook-id"]
        self.send_response(204)  # rule 3: answered before the work (a crash after this loses nothing: see rule 2)
        self.end_headers()
        if message_id not in seen:
            seen.add(message_id)
            handle(event)

    def log_message(self, *args: object) -> None:
        """Quiet: print only the events."""


def main() -> None:
    """Listen on 127.0.0.1 (the port in argv, default 8000) with the secret in ``WEBHOOK_SECRET``."""
    Receiver.verifier = Webhook(os.environ["WEBHOOK_SECRET"])
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    print(f"listening on 127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()


if __name__ == "__main__":
    main()
