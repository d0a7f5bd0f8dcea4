# Reliability: API contract, fuzzing, hostile input, security, chaos and soak; docs/reliability.md.
# `make test` already runs the short versions of all of these; the targets below run them alone or longer.
RELIABILITY_RESULTS_DIR ?= $(CURDIR)/.run/reliability
export RELIABILITY_RESULTS_DIR

.PHONY: openapi-validate fuzz schemathesis noisy-neighbour hostile security chaos soak cluster-failover reliability reliability-report

openapi-validate: venv ## validate services/api/chat_api/openapi.json (OpenAPI 3)
	$(BIN)/openapi-spec-validator services/api/chat_api/openapi.json

fuzz: venv ## schemathesis against a local system, longer budget (FUZZ_MAX_EXAMPLES=200, FUZZ_SEED to replay)
	FUZZ_MAX_EXAMPLES=$(or $(FUZZ_MAX_EXAMPLES),200) $(BIN)/python -m pytest tests/reliability/test_fuzz.py

schemathesis: venv ## schemathesis, every check, against a system started as `make run` starts it (FUZZ_MAX_EXAMPLES=50)
	@# The same run `make test` makes (tests/reliability/test_fuzz.py, 25 examples per operation); any finding fails.
	FUZZ_MAX_EXAMPLES=$(or $(FUZZ_MAX_EXAMPLES),50) $(BIN)/python -m pytest -p no:cacheprovider tests/reliability/test_fuzz.py

noisy-neighbour: venv ## a hostile client beside a quiet tenant; the quiet create p99 held to 2x (NOISY_KINDS=a,b: a subset)
	NOISY_STRICT_P99=1 NOISY_HOSTILE_RATE=0 $(BIN)/python -m pytest -s tests/e2e/test_noisy_neighbour.py

hostile: venv ## hostile HTTP and queue input: documented 4xx, nothing stored
	$(BIN)/python -m pytest tests/reliability/test_hostile_input.py tests/reliability/test_poison_messages.py

security: venv ## tokens, tenant isolation, admin key, rate limit, headers, error bodies, secrets in logs
	$(BIN)/python -m pytest tests/reliability/test_security.py

chaos: venv ## kill writers, RabbitMQ, Redis, MariaDB under load, with long outages (CHAOS_LONG=1)
	CHAOS_LONG=1 $(BIN)/python -m pytest tests/chaos/test_chaos.py

soak: venv ## 10-minute soak (SOAK_SECONDS=600): memory, fds, threads and connections must not grow
	SOAK_SECONDS=$(or $(SOAK_SECONDS),600) $(BIN)/python -m pytest tests/chaos/test_soak.py

cluster-failover: venv ## broker failover on a 3-node loopback RabbitMQ cluster, then its section of docs/reliability.md
	status=0; $(BIN)/python -m pytest tests/cluster/test_rabbit_failover.py || status=$$?; \
	  $(BIN)/python -m chat_devtools.reliability_report --results $(RELIABILITY_RESULTS_DIR) --keep && exit $$status

reliability-report: venv ## regenerate docs/reliability.md from the last results in $(RELIABILITY_RESULTS_DIR)
	$(BIN)/python -m chat_devtools.reliability_report --results $(RELIABILITY_RESULTS_DIR)

reliability: venv ## every reliability suite (short versions), then regenerate docs/reliability.md from its results
	rm -rf $(RELIABILITY_RESULTS_DIR)
	status=0; $(BIN)/python -m pytest tests/reliability tests/chaos tests/cluster/test_rabbit_failover.py || status=$$?; \
	  $(BIN)/python -m chat_devtools.reliability_report --results $(RELIABILITY_RESULTS_DIR) && exit $$status
