#!/usr/bin/env bash
# `make test`: uses the running control plane if `make cluster-up` started one, otherwise starts
# its own and stops it again, whatever the tests' outcome. The exit code is the tests'.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
own=0
if [[ ! -f target/cluster/state-dir ]]; then
  tests/cluster/up.sh || { echo "control plane failed to start; see target/cluster/logs" >&2; exit 1; }
  own=1
fi
export KUBECONFIG="$repo/target/cluster/kubeconfig"
if [[ "${1:-test}" == bench ]]; then
  cargo bench --bench rollouts
else
  cargo test --lib --bins --tests -- ${TEST_ARGS:-}
fi
rc=$?
if [[ $own == 1 ]]; then tests/cluster/down.sh; fi
exit $rc
