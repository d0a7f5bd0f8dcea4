# The kopf operator (operator/, docs/operator.md): tests here, a local run against the current kubeconfig.
OPERATOR_API_URL ?= http://127.0.0.1:$(or $(PORT),8080)

.PHONY: test-operator operator-crds operator-run e2e-operator

test-operator: venv ## operator tests that run here (real MariaDB/Redis, offline CRD and body checks)
	$(BIN)/python -m pytest tests/operator

operator-crds: ## kubectl apply the Application and kopf peering CRDs to the current cluster
	kubectl apply -f helm/chat-system/crds/
	kubectl apply -f - <<< '{"apiVersion":"kopf.dev/v1","kind":"ClusterKopfPeering","metadata":{"name":"chat-system"}}'

operator-run: venv ## run the operator locally against the current kubeconfig (every namespace)
	API_INTERNAL_URL=$(OPERATOR_API_URL) METRICS_PORT=$(or $(OPERATOR_METRICS_PORT),9090) \
	  LIVENESS_ENDPOINT=http://127.0.0.1:8081/healthz $(BIN)/python -m chat_operator

e2e-operator: venv ## the operator's kind e2e (cluster with the chart installed; needs API_BASE_URL)
	KIND_E2E=1 $(BIN)/python -m pytest tests/kind/test_operator_kind.py
