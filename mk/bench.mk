# Benchmarks: `make bench` measures the write path against the ceilings of its own parts.
# It is a benchmark, not a test: CI never runs it. Knobs: BENCH_SECONDS, BENCH_CONCURRENCY,
# BENCH_DRAIN_MESSAGES, BENCH_GROWTH_ROWS, BENCH_E2E_SECONDS, BENCH_METRICS_ITERATIONS (see benchmarks/run.py).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: bench bench-quick bench-wrk bench-smoke

bench-wrk: ## install the load generator (Debian's wrk) when it is missing
	@command -v wrk >/dev/null || $(SUDO) apt-get install -y wrk || ($(SUDO) apt-get update && $(SUDO) apt-get install -y wrk)

bench: venv bench-wrk ## every benchmark scenario (~12 min on 2 cores): results/latest.json, plots, docs/performance.md
	$(BIN)/python -m benchmarks

bench-quick: venv bench-wrk ## a short smoke run of every scenario (small sizes; does not touch latest.json or the docs)
	BENCH_SECONDS=2 BENCH_CONCURRENCY=1,64 BENCH_DRAIN_MESSAGES=10000 BENCH_GROWTH_ROWS=50000 BENCH_E2E_SECONDS=3 \
		BENCH_METRICS_ITERATIONS=20000 BENCH_STREAMS_IDLE=1000 BENCH_STREAMS_OPEN=200 \
		$(BIN)/python -m benchmarks --no-report

bench-smoke: venv ## import every benchmarks module (seconds; CI runs it so the benchmark code cannot rot unnoticed)
	$(BIN)/python -c 'import importlib, pkgutil, benchmarks; [importlib.import_module(f"benchmarks.{m.name}") for m in pkgutil.iter_modules(benchmarks.__path__)]'
