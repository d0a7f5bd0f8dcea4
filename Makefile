# chat-system: `make run` starts everything locally, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The installable packages (each has its own pyproject.toml); the virtualenv has them all in editable mode.
PACKAGES := common services/api services/chat-writer services/message-writer services/counter-cron services/webhook-dispatcher operator devtools
export COUNT_SYNC_EVERY_SECONDS ?= 30
# Key of the sealed token copies for `make migrate` / `make run` (docs/security.md): made once, kept in .run/ (not
# in git), read by the shell so no command line shows it; TOKEN_SEALING_KEY in the environment wins.
SEALING_KEY_FILE := .run/token-sealing-key
LOCAL_SEALING_KEY = $${TOKEN_SEALING_KEY:-$$(cat $(SEALING_KEY_FILE))}
# The same for the key that signs stream tickets (STREAM_TICKET_KEYS in the environment wins), and the one that seals
# the webhook endpoints' signing secrets (WEBHOOK_SEALING_KEY).
TICKET_KEY_FILE := .run/stream-ticket-key
LOCAL_TICKET_KEYS = $${STREAM_TICKET_KEYS:-$$(cat $(TICKET_KEY_FILE))}
WEBHOOK_KEY_FILE := .run/webhook-sealing-key
LOCAL_WEBHOOK_KEY = $${WEBHOOK_SEALING_KEY:-$$(cat $(WEBHOOK_KEY_FILE))}

.PHONY: help services control-plane venv migrate run sync-counts reindex test test-unit test-fast lint format bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements.txt requirements-dev.txt $(PACKAGES:%=%/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet -c requirements.txt $(PACKAGES:%=-e %)
	touch $@

services: ## install (Debian packages) and start MariaDB, Redis and RabbitMQ on loopback, if not running (root)
	bash devtools/services.sh

control-plane: ## build etcd, kube-apiserver, controller manager, scheduler, kubectl, kwok, helm (Go module proxy; cached)
	@# Found in KUBEBUILDER_ASSETS or the cache: returns at once. Otherwise ~20 min on 2 cores, with progress.
	@bash devtools/control-plane/build.sh >/dev/null

venv: $(BIN)/.installed ## create the virtualenv: pinned dependencies, every package of the repository editable

$(SEALING_KEY_FILE) $(TICKET_KEY_FILE) $(WEBHOOK_KEY_FILE):
	@mkdir -p $(@D) && umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' > $@

migrate: venv $(SEALING_KEY_FILE) ## create the database if missing and apply migrations; bring existing queues to QUEUE_TYPE
	TOKEN_SEALING_KEY=$(LOCAL_SEALING_KEY) $(BIN)/python -m chat_common.ops.migrate
	$(BIN)/python -m chat_common.ops.queue_migration

run: migrate $(TICKET_KEY_FILE) $(WEBHOOK_KEY_FILE) ## start API (127.0.0.1:$$PORT), both writers, the webhook dispatcher and the periodic count sync; Ctrl-C stops all
	@# honcho hands each process PORT=<base + 100 × its index>: the API is first, so it gets $${PORT:-8080}.
	TOKEN_SEALING_KEY=$(LOCAL_SEALING_KEY) STREAM_TICKET_KEYS=$(LOCAL_TICKET_KEYS) WEBHOOK_SEALING_KEY=$(LOCAL_WEBHOOK_KEY) \
		PATH=$(CURDIR)/$(BIN):$$PATH \
		$(BIN)/honcho start -f Procfile --port $${PORT:-8080}

sync-counts: venv ## run one count sync and exit
	$(BIN)/python -m counter_cron

reindex: venv ## rebuild the Elasticsearch index from MySQL (no-op with the embedded MySQL search)
	$(BIN)/python -m message_writer.reindex

test: venv control-plane ## the whole test suite (needs `make services`; builds or finds the control plane first)
	$(BIN)/python -m pytest

test-unit: venv ## the unit tests only: the rules on in-memory fakes, no service reachable (seconds)
	@# The fuzzing plugins take half of pytest's start-up and serve no unit test. Bytecode is cached even where the
	@# environment says not to (PYTHONDONTWRITEBYTECODE=1 on this machine): compiling every module and rewriting every
	@# test's assertions again would cost a second and a half of each run.
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest tests/unit -q -p no:schemathesis -p no:hypothesispytest

lint: venv ## ruff lint and format check; layer contracts (import-linter)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports --no-cache

format: venv ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

-include mk/*.mk
