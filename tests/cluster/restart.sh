#!/usr/bin/env bash
# Fault injection: stops one component of a control plane started by up.sh (SIGTERM, then SIGKILL),
# keeps it down for SECONDS, and starts it again with the same command line, ports and data.
# Usage: restart.sh NAME [SECONDS]   (NAME: etcd, kube-apiserver, kube-controller-manager, ...)
# The instance is $CLUSTER_DIR (default target/cluster).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${CLUSTER_DIR:-$(cd "$here/../.." && pwd)/target/cluster}"
name="${1:?usage: restart.sh NAME [SECONDS]}"
down="${2:-0}"
state="$(cat "$out/state-dir")"
cmd="$state/cmd/$name"
[[ -f "$cmd" ]] || { echo "[restart] no command recorded for $name in $state" >&2; exit 1; }
pid="$(cat "$state/pids/$name.pid")"
kill -TERM "$pid" 2>/dev/null || true
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$pid" 2>/dev/null || true
echo "[restart $(date +%H:%M:%S)] $name stopped; down for ${down}s" >&2
sleep "$down"
bash -c "exec $(cat "$cmd")" >> "$out/logs/$name.log" 2>&1 &
echo $! > "$state/pids/$name.pid"
echo "[restart $(date +%H:%M:%S)] $name started again (pid $!)" >&2
