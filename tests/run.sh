#!/usr/bin/env bash
# `make test` / `make chaos` / `make bench`.
# test:  the unit and end-to-end tests on the shared control plane (the running one if
#        `make cluster-up` started it, else one of its own, stopped again), then the bounded
#        fault-injection suite on a second control plane of its own in target/chaos-cluster
#        (it stops that one's API server and etcd).
# chaos: the long fault-injection suite only (CHAOS_LONG=1).
# bench: the benchmark on the shared control plane.
# The exit code is the tests'.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
mode="${1:-test}"

chaos() { # run the fault-injection suite on its own control plane
  local dir="$repo/target/chaos-cluster" rc
  CLUSTER_DIR="$dir" tests/cluster/down.sh 2>/dev/null
  CLUSTER_DIR="$dir" tests/cluster/up.sh >/dev/null || { echo "the fault-injection control plane failed to start; see $dir/logs" >&2; return 1; }
  # One at a time: an API server outage would otherwise hit every test at once.
  KUBECONFIG="$dir/kubeconfig" cargo test --test chaos -- --test-threads=1 ${TEST_ARGS:-}
  rc=$?
  CLUSTER_DIR="$dir" tests/cluster/down.sh
  return $rc
}

if [[ "$mode" == chaos ]]; then
  CHAOS_LONG=1 chaos
  exit $?
fi

own=0
if [[ ! -f target/cluster/state-dir ]]; then
  tests/cluster/up.sh || { echo "control plane failed to start; see target/cluster/logs" >&2; exit 1; }
  own=1
fi
export KUBECONFIG="$repo/target/cluster/kubeconfig"
if [[ "$mode" == bench ]]; then
  # The benchmark holds a socket per connection of the peer and reads its own logs: room for both.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  cargo bench --bench rollouts
  rc=$?
  if [[ $rc == 0 ]]; then
    "$(tests/tools.sh chart)/python" tests/bench/chart.py target/bench/results.json target/bench/bench.png
  fi
else
  cargo test --lib --bins --tests -- ${TEST_ARGS:-}
  rc=$?
fi
if [[ $own == 1 ]]; then tests/cluster/down.sh; fi
if [[ "$mode" == test && $rc == 0 ]]; then
  chaos
  rc=$?
fi
exit $rc
