"""Fuzzing the running API from its OpenAPI document with schemathesis, on a bounded budget.

Every phase runs (explicit examples, coverage of boundaries and negative values, random fuzzing, stateful
sequences through the links it infers from ``Location`` headers) with every check, save one: a chat or
message created a moment ago may not be readable yet — creates are asynchronous by design — so
``ensure_resource_availability`` does not apply. Path tokens are drawn from a seeded application most of
the time (so requests get past the 404), admin operations get the admin key through the document's
security scheme, and DELETE draws from throwaway applications.

The run gets a system of its own: what the fuzzer does to it (thousands of applications, deletes racing
creates) must not spill into other tests. Afterwards the writers must still be writing. Budget:
``FUZZ_MAX_EXAMPLES`` per operation (default 25, about 30 s here; ``make fuzz`` runs 200), ``FUZZ_SEED`` to
replay a run. The JUnit and JSON reports land in the system's log directory.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_devtools.http import Api
from chat_devtools.processes import System
from tests.conftest import own_system

DOCUMENT = Path(__file__).resolve().parents[2] / "services/api/chat_api/openapi.json"
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
SEED = os.environ.get("FUZZ_SEED")

CONFIG = """
# Written by tests/reliability/test_fuzz.py for one run.
# More than one worker trips a race in CPython 3.11's AST parser inside Hypothesis (runtime errors, no findings).
workers = 1
hooks = "{hooks}"

[generation]
database = "none"

[checks.negative_data_rejection]
# 411: a body sent chunked is refused before it is parsed; 414 and 431: a request line or headers past the
# server's limits are refused before anything parses them. Those are rejections too.
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 411, 413, 414, 415, 422, 428, 429, 431]

[auth.openapi.adminKey]
bearer = "${{FUZZ_ADMIN_KEY}}"

# The header form of the tenant routes (/application/...): the seeded application's token in Authorization.
[auth.openapi.applicationToken]
bearer = {token_value}

[dictionaries.tokens]
values = [{token}]

[dictionaries.disposable]
values = [{disposable}]

[dictionaries.numbers]
values = [1, 2]

[parameters]
"path.token" = {{ dictionary = "tokens", probability = 0.8 }}
"path.chat_number" = {{ dictionary = "numbers", probability = 0.5 }}
"path.message_number" = {{ dictionary = "numbers", probability = 0.5 }}

[[operations]]
include-name = "DELETE /applications/{{token}}"
parameters = {{ "path.token" = {{ dictionary = "disposable", probability = 0.8 }} }}

# A live stream (SSE) never ends by itself, so every 200 would be a timeout here: tests/integration/test_streams.py
# and tests/e2e/test_streams.py check its answers, and tests/integration/test_stream_event_schema.py runs this same
# response check (every event against the document's itemSchema) on a stream that its test ends. The same for the
# ticket's stream (the fuzzer reuses the tickets POST …/stream-tickets answers): tests/e2e/test_stream_tickets.py.
[[operations]]
include-path-regex = '(/messages/stream$|^/streams/)'
enabled = false

# A page by `page` may start at most 10,000 rows in: (page - 1) x per_page, lifted by `after` on the keyset lists.
# A rule over two or three parameters that an OpenAPI document cannot state per parameter, so a schema-valid
# `page=4370` is a 400 there; tests/unit/test_resources_http.py holds the rule itself (both sides of the cap).
[[operations]]
include-method = "GET"
include-path-regex = '(/applications|/chats|/messages|/search)$'
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]

# Webhook endpoints: a schema-valid URL may still name an address the egress rule refuses (a literal loopback or
# private address: 422, which JSON Schema cannot state), a schema-valid secret may not be the base64 of 24 to 64 bytes
# (422), a name may be taken or the application hold its 10 endpoints already (409), and a replay cursor may be older
# than the log's retention (410) or beyond its head (422). tests/unit/test_webhook_endpoints.py holds those rules.
[[operations]]
include-path-regex = '/webhooks'
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "404", "409", "410", "422"]

# Tenant management would suspend the seeded application, rotate its token away, cap its chats or change its CORS
# origins, and later requests of the run would be refused: these operations draw from the throwaway applications,
# never from values seen in responses (the seeded token is one of them), and stay out of the stateful sequences (a
# chat create refused by a tenant's maxChats is a 422 for a schema-valid request).
[[operations]]
include-path-regex = '/(suspend|resume|rotate-token|limits|cors-origins)$'
parameters = {{ "path.token" = {{ dictionary = "disposable", probability = 0.8 }} }}
[operations.phases.examples]
extra-data-sources = {{ responses = false }}
# The coverage phase takes one token for all of an operation's cases, from the values seen in responses unless told
# not to: the webhook routes' answers (Location: /applications/<seeded token>/webhooks/…) made it the seeded token,
# whose maxMessageBytes then ended at 1 and every later message create a 422
# (FUZZ_SEED=46121102321661791140776259301556284445 before this setting).
[operations.phases.coverage]
extra-data-sources = {{ responses = false }}
[operations.phases.fuzzing]
extra-data-sources = {{ responses = false }}
[operations.phases.stateful]
enabled = false
"""


def _quoted(values: list[str]) -> str:
    return ", ".join(json.dumps(v) for v in values)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[System, str]]:
    """A system (with an admin key) of the fuzzer's own."""
    if os.environ.get("API_BASE_URL"):
        pytest.skip("the fuzzing run starts its own system; API_BASE_URL is set")
    admin_key = f"adm-{secrets.token_urlsafe(24)}"
    with own_system("fuzz", admin_api_key=admin_key) as system:
        yield system, admin_key


def test_schemathesis_finds_no_server_error_and_no_schema_violation(fuzzed, fuzz_results, tmp_path):
    system, admin_key = fuzzed
    admin_api = Api(system.base_url, admin_key=admin_key)
    token = admin_api.new_application("fuzz target")
    for chat_name in ("first", "second"):
        chat = admin_api.new_chat(token, chat_name)
        for body in ("hello fuzz", "second message"):
            admin_api.wait_message(token, chat, admin_api.new_message(token, chat, body))
    disposable = [admin_api.new_application(f"disposable {i}") for i in range(20)]
    config = tmp_path / "schemathesis.toml"
    hooks = Path(__file__).with_name("schemathesis_hooks.py")
    config.write_text(
        CONFIG.format(
            token=_quoted([token]), token_value=json.dumps(token), disposable=_quoted(disposable), hooks=hooks
        )
    )
    reports = system.log_dir / "schemathesis"
    argv = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file", str(config),
        "run", str(DOCUMENT),
        "--url", system.base_url,
        "--checks", "all",
        "--exclude-checks", "ensure_resource_availability",
        "--max-examples", str(MAX_EXAMPLES),
        "--request-timeout", "20",
        "--report", "junit,json",
        "--report-dir", str(reports),
        "--report-json-path", str(reports / "run.json"),
        "--report-junit-path", str(reports / "junit.xml"),
    ]  # fmt: skip
    if SEED:
        argv += ["--seed", SEED]
    env = {**os.environ, "FUZZ_ADMIN_KEY": admin_key, "NO_COLOR": "1"}
    run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    (reports / "output.txt").write_text(run.stdout + run.stderr)

    report = json.loads((reports / "run.json").read_text())
    fuzz_results.meta.update(
        seed=report["seed"],
        seconds=round(report["running_time"], 1),
        max_examples=MAX_EXAMPLES,
        operations=report["operations"]["tested"],
        test_cases=report["test_cases"]["generated"],
        failures=report["test_cases"]["unique_failures"],
        errors=len(report["errors"]),
        phases={name: phase["status"] for name, phase in report["phases"].items()},
    )
    for failure in report["failures"]:
        fuzz_results.add(code=failure["code"], title=failure["title"], count=failure["count"],
                         operations=failure["operations"])  # fmt: skip
    assert run.returncode == 0, f"schemathesis found problems (full output in {reports}):\n{run.stdout[-6000:]}"
    # Every operation the config selects (all but the live streams: both token forms and the ticket's, deselected
    # above) was tested.
    assert report["operations"]["tested"] == report["operations"]["selected"] == report["operations"]["total"] - 3

    # Whatever the fuzzer sent (including deletes racing creates), the writers must still be writing.
    probe = admin_api.new_application("after the fuzzing")
    chat = admin_api.new_chat(probe)
    number = admin_api.new_message(probe, chat, "still consuming")
    fuzz_results.meta["writers_alive_after"] = False
    for process in (system.api, system.chat_writer, system.message_writer):
        assert process.popen.poll() is None, f"{process.name} died during the fuzzing"
    admin_api.wait_message(probe, chat, number, timeout=20)
    fuzz_results.meta["writers_alive_after"] = True
