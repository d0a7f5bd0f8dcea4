#!/usr/bin/env bash
# Build the Kubernetes control plane the tests run on loopback — etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok — and helm, all from pinned Go modules through the Go module proxy, into a cache
# outside the repository. Reused when present; `KUBEBUILDER_ASSETS` (the envtest convention) skips the build.
#
#   devtools/control-plane/build.sh            # prints the bin directory on its last line
#
# The first build takes ~15-25 minutes on 2 cores (most of it compiling kube-apiserver and the controller
# manager); later runs find the binaries and return at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache="${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chat-system/control-plane}"
bin="$cache/k8s-$KUBERNETES_VERSION/bin"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)
log() { printf '[control-plane %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# A binary counts as present in the cache, or in KUBEBUILDER_ASSETS (envtest's binaries, a kind node's, ...).
present() { [ -x "$bin/$1" ] || { [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$1" ]; }; }
have_all() { for b in "${binaries[@]}"; do present "$b" || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
work="$cache/work"
mkdir -p "$work"

progress() { # progress <what>: go build -v names each package it compiles: count them, pass anything else through
  awk -v what="$1" '/ / { print; next } { n++; if (n % 250 == 0) { printf "[control-plane] %s: %d packages compiled\n", what, n; fflush() } }' >&2
}

step() { # step <binary> <what>: skip a binary already built (a build interrupted half-way resumes)
  if present "$1"; then log "$1: present"; return 1; fi
  log "$1: $2"
  return 0
}

# -- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl -------------------------------------------
# k8s.io/kubernetes requires its staging modules at v0.0.0 with replace lines pointing into its own tree; a module
# that depends on it must pin each to the v0.<minor>.<patch> release of the same tag (what downstream projects do).
if present kube-apiserver && present kube-controller-manager && present kube-scheduler && present kubectl; then
  log "kubernetes $KUBERNETES_VERSION: present"
else
  k8s="$work/kubernetes-$KUBERNETES_VERSION"
  mkdir -p "$k8s"
  staging_version="v0.${KUBERNETES_VERSION#v1.}"
  {
    echo "module chat-system/control-plane/kubernetes"
    echo
    echo "go 1.24.0"
    echo
    echo "godebug default=go1.24"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    for name in $KUBERNETES_STAGING_MODULES; do echo "	k8s.io/$name => k8s.io/$name $staging_version"; done
    echo ")"
  } > "$k8s/go.mod"
  printf 'package tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n\t_ "k8s.io/kubernetes/cmd/kube-controller-manager"\n\t_ "k8s.io/kubernetes/cmd/kube-scheduler"\n\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n' > "$k8s/tools.go"
  sed -i '1i //go:build tools\n' "$k8s/tools.go"
  log "kubernetes $KUBERNETES_VERSION: resolving modules (downloads ~1 GB the first time)"
  (cd "$k8s" && go mod tidy -e >/dev/null 2>"$k8s/tidy.log" || { cat "$k8s/tidy.log" >&2; exit 1; })
  major_minor="${KUBERNETES_VERSION#v}"; major="${major_minor%%.*}"; rest="${major_minor#*.}"; minor="${rest%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    step "$cmd" "compiling k8s.io/kubernetes/cmd/$cmd" || continue
    (cd "$k8s" && go build -v -trimpath -ldflags "$ldflags" -o "$bin/$cmd.partial" "k8s.io/kubernetes/cmd/$cmd" 2>&1 | progress "$cmd")
    mv "$bin/$cmd.partial" "$bin/$cmd"
  done
fi

# -- etcd: its server module keeps replace lines, so `go install` refuses it; build it from a module of our own --
if step etcd "compiling go.etcd.io/etcd/server/v3 $ETCD_VERSION"; then
  e="$work/etcd-$ETCD_VERSION"; mkdir -p "$e"
  printf 'module chat-system/control-plane/etcd\n\ngo 1.23.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$e/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > "$e/tools.go"
  (cd "$e" && go mod tidy -e >/dev/null 2>"$e/tidy.log" && go build -v -trimpath -ldflags "-s -w" -o "$bin/etcd.partial" go.etcd.io/etcd/server/v3 2>&1 | progress etcd)
  mv "$bin/etcd.partial" "$bin/etcd"
fi

# -- kwok and helm: plain modules, `go install` at a version ----------------------------------------------------
for spec in "kwok sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "helm helm.sh/helm/v3/cmd/helm@$HELM_VERSION"; do
  name="${spec%% *}"; target="${spec#* }"
  step "$name" "go install $target" || continue
  GOBIN="$work/gobin" go install -v -trimpath -ldflags "-s -w" "$target" 2>&1 | progress "$name"
  mv "$work/gobin/$name" "$bin/$name"
done

have_all
log "ready: $bin"
echo "$bin"
