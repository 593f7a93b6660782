#!/usr/bin/env bash
# `make demo`: a short story on the local control plane, with every event shown as ilert gets it.
# With ILERT_INTEGRATION_KEY set, the events go to the real ilert API instead.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="$repo/target/demo"
mkdir -p "$out"
NS=ilert-demo
bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }

bold "1/4  Building what is missing (the first run builds Kubernetes from source: about 13 minutes on 2 cores)"
tests/cluster/build.sh
cargo build --release --quiet
bin="$repo/target/release/ilert-rollout-controller"

own_cluster=0
pids=()
cleanup() {
  set +e
  bold "Cleaning up"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [[ -n "${KUBECONFIG:-}" && -f "$KUBECONFIG" ]]; then
    "$repo/target/cluster/bin/kubectl" delete namespace "$NS" --wait=false >/dev/null 2>&1
  fi
  [[ $own_cluster == 1 ]] && tests/cluster/down.sh
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold "2/4  Starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
if [[ ! -f target/cluster/state-dir ]]; then
  tests/cluster/up.sh >/dev/null
  own_cluster=1
else
  say "reusing the control plane that is already running"
fi
export KUBECONFIG="$repo/target/cluster/kubeconfig"
kubectl() { "$repo/target/cluster/bin/kubectl" "$@"; }
"$bin" crds | kubectl apply --server-side --force-conflicts -f - >/dev/null
kubectl wait --for=condition=Established crd/ilertpipelines.ilert.com --timeout=30s >/dev/null
kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$NS" >/dev/null
until kubectl -n "$NS" get serviceaccount default >/dev/null 2>&1; do sleep 0.2; done

bold "3/4  Starting the controller"
if [[ -n "${ILERT_INTEGRATION_KEY:-}" ]]; then
  api_url="${ILERT_API_URL:-https://api.ilert.com}"
  key="$ILERT_INTEGRATION_KEY"
  say "sending to the real ilert API at $api_url"
else
  # The last run's log is put aside first: its port line is not this receiver's, and the new
  # receiver empties the file only once it starts, which may be after we looked.
  log="$out/receiver.log"
  [[ -f "$log" ]] && mv -f "$log" "$log.1"
  run_id="$$-$RANDOM"
  python3 demo/receiver.py --run-id "$run_id" > "$log" &
  receiver=$!
  pids+=("$receiver")
  port=""
  deadline=$((SECONDS + 15))
  # Only the whole line of this run's receiver counts (", ready" ends it).
  until port="$(sed -n "s/^receiver $run_id listening on port \([0-9][0-9]*\), ready\$/\1/p" "$log" 2>/dev/null)" && [[ -n "$port" ]]; do
    kill -0 "$receiver" 2>/dev/null || { say "the local receiver stopped; see $log"; exit 1; }
    (( SECONDS < deadline )) || { say "the local receiver did not start within 15 s; see $log"; exit 1; }
    sleep 0.1
  done
  api_url="http://127.0.0.1:$port"
  key="ilapid-demo-key"
  say "sending to a local receiver that prints each event as ilert receives it (set ILERT_INTEGRATION_KEY to use ilert)"
  tail -n +2 -f "$log" &
  pids+=($!)
fi
kubectl -n "$NS" create secret generic ilert --from-literal=integrationKey="$key" >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: ilert.com/v1alpha1
kind: IlertPipeline
metadata: {name: demo, namespace: $NS}
spec:
  integrationKeySecretRef: {name: ilert}
YAML
"$bin" run --namespace "$NS" --api-url "$api_url" --cluster-name demo --leader-elect=false \
  --listen-address 127.0.0.1:0 --log-format text > "$out/controller.log" 2>&1 &
pids+=($!)
say "controller log: $out/controller.log"
until grep -q "caches synced" "$out/controller.log"; do sleep 0.2; done

sent() { kubectl -n "$NS" get ilp demo -o jsonpath='{.status.eventsSent}' 2>/dev/null || echo 0; }
wait_sent() { # N: until the pipeline reports N events sent
  local deadline=$((SECONDS + 90))
  until [[ "$(sent)" -ge "$1" ]]; do
    (( SECONDS < deadline )) || { say "no event after 90 s; see $out/controller.log"; exit 1; }
    sleep 0.5
  done
  sleep 0.5
}
deploy() { # IMAGE REPLICAS
  kubectl apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: $NS
  labels: {app.kubernetes.io/name: web, app.kubernetes.io/part-of: shop}
  annotations: {kubernetes.io/change-cause: "$3"}
spec:
  replicas: $2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "$1"}]}
YAML
}

bold "4/4  The story"
bold "  a) A new Deployment rolls out (3 replicas of nginx:1.25): one Completed event"
deploy nginx:1.25 3 "first release"
wait_sent 1
bold "  b) A new image (nginx:1.26): one event for revision 2, with the previous image"
deploy nginx:1.26 3 "upgrade to 1.26"
wait_sent 2
bold "  c) Scaling to 5 replicas is not a rollout: nothing is sent"
kubectl -n "$NS" scale deployment web --replicas=5 >/dev/null
kubectl -n "$NS" rollout status deployment web --timeout=60s >/dev/null
sleep 3
say "events sent so far: $(sent)"
bold "  d) kubectl rollout undo: a RolledBack event"
kubectl -n "$NS" rollout undo deployment web >/dev/null
wait_sent 3
bold "  e) A rollout that cannot finish (no node fits, progressDeadlineSeconds=10): a Failed event"
kubectl -n "$NS" patch deployment web --type merge -p \
  '{"spec":{"progressDeadlineSeconds":10,"template":{"spec":{"nodeSelector":{"no-such-node":"true"},"containers":[{"name":"web","image":"nginx:1.27"}]}}}}' >/dev/null
wait_sent 4
bold "  f) A test event on demand: kubectl annotate ilp demo ilert.com/test-event=\$(date +%s)"
kubectl -n "$NS" annotate ilp demo "ilert.com/test-event=$(date +%s)" --overwrite >/dev/null
until [[ -n "$(kubectl -n "$NS" get ilp demo -o jsonpath='{.status.testEvent.result}')" ]]; do sleep 0.5; done
sleep 0.5
bold "What the pipeline says (kubectl get ilp):"
kubectl -n "$NS" get ilp demo
bold "Kubernetes Events on the pipeline:"
kubectl -n "$NS" get events --field-selector involvedObject.name=demo -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message 2>/dev/null || true
bold "Done. Press Ctrl-C to stop now, or wait 5 s."
sleep 5
