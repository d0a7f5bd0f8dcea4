# Kubernetes: images, a local kind cluster (ingress-nginx, KEDA, kube-prometheus-stack), the Helm chart and its
# offline tests. `make kind-up images deploy e2e` goes from nothing to the end-to-end suite behind the ingress.
KIND_CLUSTER ?= chat-system
K8S_NAMESPACE ?= chat-system
HELM_RELEASE ?= chat-system
IMAGE_PREFIX ?= chat-system
IMAGE_TAG ?= dev
E2E_BASE_URL ?= http://localhost
# Upstream charts, pinned by minor version (Helm resolves the newest patch).
INGRESS_NGINX_CHART_VERSION ?= ~4.13.0
KEDA_CHART_VERSION ?= ~2.18.0
KUBE_PROMETHEUS_STACK_CHART_VERSION ?= ~75.0.0
# The images: each is a target of the root Dockerfile (the build context is the repository root).
IMAGES := api chat-writer message-writer webhook-dispatcher counter-cron operator
IMAGE_REFS = $(foreach name,$(IMAGES),$(IMAGE_PREFIX)/$(name):$(IMAGE_TAG))
CHECKOV_VENV := $(VENV)/checkov

.PHONY: kind-up kind-down images deploy undeploy e2e grafana prometheus chart-test chart-tools chart-readme

kind-up: ## create the kind cluster (kind-config.yaml) with ingress-nginx, KEDA and kube-prometheus-stack
	@kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' \
	  || kind create cluster --name $(KIND_CLUSTER) --config kind-config.yaml --wait 120s
	helm upgrade --install kube-prometheus-stack kube-prometheus-stack \
	  --repo https://prometheus-community.github.io/helm-charts --version '$(KUBE_PROMETHEUS_STACK_CHART_VERSION)' \
	  --namespace monitoring --create-namespace -f helm/kind/kube-prometheus-stack.yaml --wait --timeout 10m
	helm upgrade --install keda keda --repo https://kedacore.github.io/charts --version '$(KEDA_CHART_VERSION)' \
	  --namespace keda --create-namespace -f helm/kind/keda.yaml --wait --timeout 5m
	helm upgrade --install ingress-nginx ingress-nginx --repo https://kubernetes.github.io/ingress-nginx \
	  --version '$(INGRESS_NGINX_CHART_VERSION)' --namespace ingress-nginx --create-namespace \
	  -f helm/kind/ingress-nginx.yaml --wait --timeout 5m

kind-down: ## delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

images: ## build every image (tag IMAGE_TAG, default dev) and load it into the kind cluster
	@set -e; for name in $(IMAGES); do \
	  echo "== $(IMAGE_PREFIX)/$$name:$(IMAGE_TAG)"; \
	  docker build --target $$name -f Dockerfile -t $(IMAGE_PREFIX)/$$name:$(IMAGE_TAG) .; \
	done
	@# `kind load docker-image` fails with Docker's containerd image store (the default of Docker 29): it saves
	@# every platform an image's index names, of which only the built one exists ("content digest ... not found").
	@# An archive of the node's platform alone loads with either store (a docker whose save takes no --platform
	@# saves the image as it is).
	@set -e; archive="$$(mktemp)"; trap 'rm -f "$$archive"' EXIT; \
	  platform="$$(docker version -f '{{.Server.Os}}/{{.Server.Arch}}')"; \
	  docker image save --platform "$$platform" -o "$$archive" $(IMAGE_REFS) 2>/dev/null \
	    || docker image save -o "$$archive" $(IMAGE_REFS); \
	  kind load image-archive --name $(KIND_CLUSTER) "$$archive"

deploy: ## install or upgrade the chart on the kind cluster (helm/values-kind.yaml) and restart onto fresh images
	helm upgrade --install $(HELM_RELEASE) helm/chat-system --namespace $(K8S_NAMESPACE) --create-namespace \
	  -f helm/values-kind.yaml --set image.tag=$(IMAGE_TAG) --wait --timeout 10m
	@# The same tag may now name a newly loaded image: roll the chat-system pods onto it.
	kubectl -n $(K8S_NAMESPACE) rollout restart deployment \
	  -l 'app.kubernetes.io/instance=$(HELM_RELEASE),app.kubernetes.io/component in (api,chat-writer,message-writer,webhook-dispatcher,operator)'
	kubectl -n $(K8S_NAMESPACE) rollout status deployment -l 'app.kubernetes.io/instance=$(HELM_RELEASE)' --timeout 5m
	helm test $(HELM_RELEASE) --namespace $(K8S_NAMESPACE)

undeploy: ## uninstall the chart (a pre-delete hook first deletes the Application objects; volumes stay)
	helm uninstall $(HELM_RELEASE) --namespace $(K8S_NAMESPACE) --timeout 10m

e2e: venv ## the HTTP end-to-end tests (and the operator's kind tests) against the API behind the ingress
	@# E2E_K8S_NAMESPACE says the API is this release in that namespace: the count-sync tests run its CronJob with
	@# kubectl. Without it (API_BASE_URL alone, e.g. `make run`) they wait for the periodic sync (tests/e2e/target.py).
	API_BASE_URL=$(E2E_BASE_URL) E2E_K8S_NAMESPACE=$(K8S_NAMESPACE) E2E_HELM_RELEASE=$(HELM_RELEASE) \
	  $(BIN)/python -m pytest tests/e2e
	@if [ -d tests/kind ]; then \
	  API_BASE_URL=$(E2E_BASE_URL) KIND_E2E=1 $(BIN)/python -m pytest tests/kind; \
	fi

grafana: ## Grafana on http://localhost:3000 (user admin; the password is printed first)
	@printf 'Grafana admin password: %s\n' \
	  "$$(kubectl -n monitoring get secret kube-prometheus-stack-grafana -o jsonpath='{.data.admin-password}' | base64 -d)"
	kubectl -n monitoring port-forward svc/kube-prometheus-stack-grafana 3000:80

prometheus: ## Prometheus on http://localhost:9090
	kubectl -n monitoring port-forward svc/kube-prometheus-stack-prometheus 9090:9090

$(CHECKOV_VENV)/bin/checkov: tests/chart/requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -r tests/chart/requirements-checkov.txt
	touch $@

chart-tools: venv $(CHECKOV_VENV)/bin/checkov ## install checkov into a virtualenv of its own (its pins clash with pytest's)

chart-test: chart-tools ## lint, render, validate and scan the chart; promtool and a real Prometheus (no cluster needed)
	$(BIN)/python -m pytest tests/chart

chart-readme: venv ## regenerate the values table of helm/chat-system/README.md from values.yaml
	$(BIN)/python -m chat_devtools.chart_readme
