#!/usr/bin/env bash
# Stops exactly the processes tests/cluster/up.sh started (by their pids) and removes the state.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${CLUSTER_DIR:-$(cd "$here/../.." && pwd)/target/cluster}"
[[ -f "$out/state-dir" ]] || { echo "[cluster-down] no control plane recorded in $out" >&2; exit 0; }
state="$(cat "$out/state-dir")"
# Stop in reverse order of start so nothing reconnects to a component that is already gone.
for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
  f="$state/pids/$name.pid"
  [[ -f "$f" ]] || continue
  pid="$(cat "$f")"
  kill -TERM "$pid" 2>/dev/null || continue
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null; fi
done
case "$state" in
  */ilert-rollout-controller-cluster.*) rm -rf "$state" ;;
esac
rm -f "$out/state-dir" "$out/kubeconfig"
echo "[cluster-down] stopped; logs kept in $out/logs" >&2
