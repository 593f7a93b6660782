#!/usr/bin/env bash
# Builds the real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok with its stages, helm) and the checkers (promtool for the chart's alert rules,
# actionlint for the workflows) from Go modules into a cache directory outside the
# repository, keyed by version. A second run finds the binaries and does nothing.
#
# Each tool gets its own generated helper module: their dependency graphs (k8s.io/* staging
# versions in particular) differ, and one shared module would force one set on all of them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${IRC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ilert-rollout-controller}"
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

log() { printf '[cluster-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# bin_dir COMPONENT VERSION -> where that component's binaries live
bin_dir() { echo "$cache_root/$1-$2/bin"; }

# prepare_module DIR MODULE VERSION PACKAGES... : a throwaway main module that requires MODULE
# and imports PACKAGES (as tools), so `go build` can build them with a consistent go.sum.
prepare_module() {
  local dir="$1" module="$2" version="$3"; shift 3
  mkdir -p "$dir"
  (
    cd "$dir"
    rm -f go.mod go.sum tools.go
    go mod init "ilert-rollout-controller.local/cluster-build" >/dev/null 2>&1
    {
      echo '//go:build tools'
      echo
      echo 'package tools'
      echo
      echo 'import ('
      for p in "$@"; do echo "	_ \"$p\""; done
      echo ')'
    } > tools.go
    go mod edit -require="$module@$version"
  )
}

build_kubernetes() {
  local out; out="$(bin_dir kubernetes "$K8S_VERSION")"
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  local missing=0
  for b in "${bins[@]}"; do [[ -x "$out/$b" ]] || missing=1; done
  if [[ $missing == 0 ]]; then log "kubernetes $K8S_VERSION: cached in $out"; return; fi
  log "kubernetes $K8S_VERSION: building ${bins[*]} (cold: many minutes on 2 cores)"
  local src="$cache_root/src/kubernetes-$K8S_VERSION"
  local pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
              k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  prepare_module "$src" k8s.io/kubernetes "$K8S_VERSION" "${pkgs[@]}"
  (
    cd "$src"
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local paths;
    # derive the replace list from its own go.mod so that bumping K8S_VERSION is all it takes.
    local upstream_mod
    upstream_mod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
    [[ -f "$upstream_mod" ]] || { log "cannot find go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
    local staging_version="v0.${K8S_VERSION#v1.}"
    local n=0
    while read -r name; do
      go mod edit -replace="$name=$name@$staging_version"
      n=$((n + 1))
    done < <(sed -n 's#^[[:space:]]*\(k8s.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$upstream_mod")
    log "kubernetes: $n staging modules replaced with $staging_version"
    # godebug settings only apply in the main module: carry upstream's over.
    local gd
    gd="$(sed -n 's/^godebug[[:space:]]\+\(.*\)$/\1/p' "$upstream_mod")"
    for kv in $gd; do go mod edit -godebug="$kv"; done
    go mod tidy >/dev/null
    local major minor
    major="$(echo "$K8S_VERSION" | sed 's/^v\([0-9]*\)\..*/\1/')"
    minor="$(echo "$K8S_VERSION" | sed 's/^v[0-9]*\.\([0-9]*\)\..*/\1/')"
    local ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
      ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    mkdir -p "$out.tmp"
    for i in "${!bins[@]}"; do
      log "kubernetes: go build ${bins[$i]}"
      go build -ldflags "$ld" -o "$out.tmp/${bins[$i]}" "${pkgs[$i]}"
    done
  )
  mkdir -p "$out"; mv "$out.tmp"/* "$out"/; rmdir "$out.tmp"
  log "kubernetes $K8S_VERSION: done"
}

build_simple() { # COMPONENT VERSION MODULE PACKAGE BINARY LDFLAGS
  local comp="$1" version="$2" module="$3" pkg="$4" bin="$5" ld="$6"
  local out; out="$(bin_dir "$comp" "$version")"
  if [[ -x "$out/$bin" ]]; then log "$comp $version: cached in $out"; return; fi
  log "$comp $version: building $bin"
  local src="$cache_root/src/$comp-$version"
  prepare_module "$src" "$module" "$version" "$pkg"
  (cd "$src" && go mod tidy >/dev/null && go build -ldflags "$ld" -o "$out.tmp/$bin" "$pkg")
  mkdir -p "$out"; mv "$out.tmp/$bin" "$out/$bin"; rmdir "$out.tmp"
  log "$comp $version: done"
}

build_kwok_stages() {
  local out; out="$(bin_dir kwok "$KWOK_VERSION")/../stages"
  if [[ -f "$out/stages.yaml" ]]; then return; fi
  local dir
  dir="$(cd "$cache_root/src/kwok-$KWOK_VERSION" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  mkdir -p "$out"
  # node initialize + heartbeat with lease (else Nodes go NotReady and Pods are evicted),
  # pod ready/complete/delete (else deleted Pods stay Terminating).
  local f first=1
  : > "$out/stages.yaml.tmp"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f "$dir/kustomize/stage/$f" ]] || { log "kwok stage $f missing in $dir"; exit 1; }
    [[ $first == 1 ]] || echo '---' >> "$out/stages.yaml.tmp"
    first=0
    cat "$dir/kustomize/stage/$f" >> "$out/stages.yaml.tmp"
  done
  mv "$out/stages.yaml.tmp" "$out/stages.yaml"
}

# The peer of `make bench` (kubewatch), from the source tarball kept in the repository's shared
# peers folder (the module proxy refuses the module itself); its dependencies come from the proxy.
build_kubewatch() {
  local out; out="$(bin_dir kubewatch "$KUBEWATCH_COMMIT")"
  if [[ -x "$out/kubewatch" ]]; then log "kubewatch $KUBEWATCH_COMMIT: cached in $out"; return; fi
  local tarball="${KUBEWATCH_TARBALL:-$here/../../../shared/peers/kubewatch-$KUBEWATCH_COMMIT.tar.gz}"
  [[ -f "$tarball" ]] || { log "kubewatch source missing: $tarball (set KUBEWATCH_TARBALL)"; exit 1; }
  log "kubewatch $KUBEWATCH_COMMIT: building from $tarball (cold: about 6 minutes on 2 cores)"
  local src="$cache_root/src/kubewatch-$KUBEWATCH_COMMIT"
  rm -rf "$src"; mkdir -p "$src"
  tar xzf "$tarball" -C "$src"
  (cd "$src/kubewatch" && GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w" -o "$out.tmp/kubewatch" .)
  mkdir -p "$out"; mv "$out.tmp/kubewatch" "$out/kubewatch"; rmdir "$out.tmp"
  log "kubewatch $KUBEWATCH_COMMIT: done"
}

# Argo Rollouts' controller, run out of cluster against the local control plane by the e2e tests,
# and the CRDs from its module's manifests/crds/. Its go.mod pins the k8s.io/* modules by
# replace directives, which only a main module's go.mod applies: they are carried over. Its
# go.mod asks for a newer Go than this machine's, so the go command fetches the approved
# toolchain from the module proxy for this build alone.
build_argo_rollouts() {
  local out; out="$(bin_dir argo-rollouts "$ARGO_ROLLOUTS_VERSION")"
  if [[ -x "$out/rollouts-controller" && -d "$out/../crds" ]]; then
    log "argo-rollouts $ARGO_ROLLOUTS_VERSION: cached in $out"; return
  fi
  log "argo-rollouts $ARGO_ROLLOUTS_VERSION: building rollouts-controller"
  local src="$cache_root/src/argo-rollouts-$ARGO_ROLLOUTS_VERSION"
  local module=github.com/argoproj/argo-rollouts pkg=github.com/argoproj/argo-rollouts/cmd/rollouts-controller
  (
    export GOTOOLCHAIN="$ARGO_ROLLOUTS_GOTOOLCHAIN"
    prepare_module "$src" "$module" "$ARGO_ROLLOUTS_VERSION" "$pkg"
    cd "$src"
    local upstream_mod
    upstream_mod="$(go mod download -json "$module@$ARGO_ROLLOUTS_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
    [[ -f "$upstream_mod" ]] || { log "cannot find go.mod of $module@$ARGO_ROLLOUTS_VERSION"; exit 1; }
    local n=0
    while read -r from to; do
      go mod edit -replace="$from=$to"
      n=$((n + 1))
    done < <(awk '/^replace \(/{r=1; next} r && /^\)/{r=0} r && NF==4 && $2=="=>" {print $1, $3 "@" $4}' "$upstream_mod")
    log "argo-rollouts: $n replace directives carried over"
    go mod tidy >/dev/null
    go build -ldflags "-s -w -X $module/utils/version.version=${ARGO_ROLLOUTS_VERSION#v}" -o "$out.tmp/rollouts-controller" "$pkg"
    local dir; dir="$(go list -m -f '{{.Dir}}' "$module")"
    mkdir -p "$out.tmp/crds"
    cp "$dir"/manifests/crds/*-crd.yaml "$out.tmp/crds/"
    chmod u+w "$out.tmp/crds"/*.yaml
  )
  mkdir -p "$out" "$out/../crds"
  mv "$out.tmp/rollouts-controller" "$out/"
  rm -rf "$out/../crds"; mv "$out.tmp/crds" "$out/../crds"; rmdir "$out.tmp"
  log "argo-rollouts $ARGO_ROLLOUTS_VERSION: done"
}

main() {
  mkdir -p "$cache_root"
  local start=$SECONDS
  build_simple etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 etcd "-s -w"
  build_simple kwok "$KWOK_VERSION" sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok kwok \
    "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
  build_kwok_stages
  build_simple helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm helm \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  build_kubernetes
  build_simple promtool "$PROMTOOL_VERSION" github.com/prometheus/prometheus \
    github.com/prometheus/prometheus/cmd/promtool promtool \
    "-s -w -X github.com/prometheus/common/version.Version=$PROMTOOL_VERSION"
  build_simple actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint \
    github.com/rhysd/actionlint/cmd/actionlint actionlint \
    "-s -w -X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION"
  build_argo_rollouts
  log "all binaries ready in $cache_root ($((SECONDS - start)) s)"
}

case "${1:-build}" in
  build) main ;;
  peers) build_kubewatch ;;
  argo-rollouts) build_argo_rollouts ;;
  print-bin-dirs)
    echo "ETCD_BIN=$(bin_dir etcd "$ETCD_VERSION")"
    echo "K8S_BIN=$(bin_dir kubernetes "$K8S_VERSION")"
    echo "KWOK_BIN=$(bin_dir kwok "$KWOK_VERSION")"
    echo "KWOK_STAGES=$(bin_dir kwok "$KWOK_VERSION")/../stages/stages.yaml"
    echo "HELM_BIN=$(bin_dir helm "$HELM_VERSION")"
    echo "PROMTOOL_BIN=$(bin_dir promtool "$PROMTOOL_VERSION")"
    echo "ACTIONLINT_BIN=$(bin_dir actionlint "$ACTIONLINT_VERSION")"
    echo "ARGO_ROLLOUTS_BIN=$(bin_dir argo-rollouts "$ARGO_ROLLOUTS_VERSION")"
    echo "ARGO_ROLLOUTS_CRDS=$(bin_dir argo-rollouts "$ARGO_ROLLOUTS_VERSION")/../crds"
    echo "KUBEWATCH_BIN=$(bin_dir kubewatch "$KUBEWATCH_COMMIT")"
    ;;
  *) echo "usage: $0 [build|peers|argo-rollouts|print-bin-dirs]" >&2; exit 2 ;;
esac
