#!/usr/bin/env bash
# Starts the real control plane on loopback: etcd, kube-apiserver (RBAC, token auth, service-account
# signing key), kube-controller-manager, kube-scheduler and kwok (the kubelet stand-in), with fake
# Nodes. State lives in a temporary directory; target/cluster/ (or $CLUSTER_DIR, for a second
# instance such as the fault-injection suite's) holds the kubeconfig, the matching kubectl and helm,
# the component logs and, per component, the command that started it (tests/cluster/restart.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${CLUSTER_DIR:-$repo/target/cluster}"
NODES="${CLUSTER_NODES:-3}"

log() { printf '[cluster-up %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ -f "$out/state-dir" ]] && [[ -d "$(cat "$out/state-dir")" ]]; then
  log "a control plane is already running (state $(cat "$out/state-dir")); run 'make cluster-down' first"
  exit 1
fi

eval "$("$here/build.sh" print-bin-dirs)"
for b in "$ETCD_BIN/etcd" "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-controller-manager" \
         "$K8S_BIN/kube-scheduler" "$K8S_BIN/kubectl" "$KWOK_BIN/kwok" "$HELM_BIN/helm" "$KWOK_STAGES" \
         "$ARGO_ROLLOUTS_BIN/rollouts-controller" "$ARGO_ROLLOUTS_CRDS/rollout-crd.yaml"; do
  [[ -e "$b" ]] || { log "missing $b: run tests/cluster/build.sh (make cluster-build) first"; exit 1; }
done

start=$SECONDS
state="$(mktemp -d "${TMPDIR:-/tmp}/ilert-rollout-controller-cluster.XXXXXX")"
mkdir -p "$out/bin" "$out/logs" "$state/pids" "$state/cmd"
rm -f "$out"/logs/*.log
echo "$state" > "$out/state-dir"
ln -sfn "$K8S_BIN/kubectl" "$out/bin/kubectl"
ln -sfn "$HELM_BIN/helm" "$out/bin/helm"
# Argo Rollouts' controller and CRDs, for the tests that install it (not installed here: the
# controller must also work on a cluster without them).
ln -sfn "$ARGO_ROLLOUTS_BIN/rollouts-controller" "$out/bin/rollouts-controller"
ln -sfn "$ARGO_ROLLOUTS_CRDS" "$out/argo-rollouts-crds"

cleanup_on_error() { log "start-up failed; logs in $out/logs"; "$here/down.sh" || true; }
trap cleanup_on_error ERR

# Free loopback ports, chosen by the kernel.
read -r P_ETCD P_PEER P_API P_KCM P_SCHED P_KWOK P_KWOK_METRICS < <(python3 - <<'PY'
import socket
socks = []
for _ in range(7):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)

# PKI: a CA and a serving certificate for 127.0.0.1/localhost (clients verify it), and one RSA key
# that signs and verifies service-account tokens (TokenRequest works).
pki="$state/pki"; mkdir -p "$pki"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=ilert-rollout-controller-test-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$pki/apiserver.key" \
  -out "$pki/apiserver.csr" 2>/dev/null
cat > "$pki/apiserver.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
EXT
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 30 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
token="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
echo "$token,admin,admin-uid,\"system:masters\"" > "$pki/tokens.csv"

server="https://127.0.0.1:$P_API"
kubeconfig="$out/kubeconfig"
cat > "$kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 < "$pki/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
KC
chmod 600 "$kubeconfig"

spawn() { # NAME CMD... : start a component in the background, its log, pid and command in known places
  local name="$1"; shift
  printf '%q ' "$@" > "$state/cmd/$name"
  "$@" > "$out/logs/$name.log" 2>&1 &
  echo $! > "$state/pids/$name.pid"
}

wait_for() { # DESCRIPTION TIMEOUT CMD...
  local what="$1" limit="$2"; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS > deadline )); then log "timed out after ${limit}s waiting for $what"; return 1; fi
    sleep 0.2
  done
}

spawn etcd "$ETCD_BIN/etcd" --name default --data-dir "$state/etcd" \
  --listen-client-urls "http://127.0.0.1:$P_ETCD" --advertise-client-urls "http://127.0.0.1:$P_ETCD" \
  --listen-peer-urls "http://127.0.0.1:$P_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$P_PEER" \
  --initial-cluster "default=http://127.0.0.1:$P_PEER" --unsafe-no-fsync --quota-backend-bytes=8589934592 \
  --listen-metrics-urls "" --log-level warn
wait_for etcd 30 curl -sf "http://127.0.0.1:$P_ETCD/health"

# Audit: only the requests of the benchmark's peer (kubewatch, under its own ServiceAccount), so
# `make bench` can count what the peer asks of the API server; nothing else is written.
cat > "$state/audit-policy.yaml" <<'AUDIT'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["system:serviceaccount:bench-peer:kubewatch"]
- level: None
AUDIT

spawn kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$P_ETCD" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$P_API" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --token-auth-file "$pki/tokens.csv" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --api-audiences https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true --endpoint-reconciler-type none \
  --max-requests-inflight 2000 --max-mutating-requests-inflight 1000 \
  --cert-dir "$state/apiserver-certs" \
  --audit-policy-file "$state/audit-policy.yaml" --audit-log-path "$out/logs/audit.log" \
  --audit-log-format json
wait_for kube-apiserver 60 "$K8S_BIN/kubectl" --kubeconfig "$kubeconfig" get --raw /readyz

spawn kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig "$kubeconfig" \
  --leader-elect=false --bind-address 127.0.0.1 --secure-port "$P_KCM" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --kube-api-qps 2000 --kube-api-burst 4000 --concurrent-deployment-syncs 50 \
  --concurrent-replicaset-syncs 50 --concurrent-gc-syncs 50 --controllers '*' \
  --authorization-always-allow-paths /healthz,/readyz,/livez,/metrics
cat > "$state/scheduler.yaml" <<SC
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: "$kubeconfig", qps: 2000, burst: 4000}
leaderElection: {leaderElect: false}
SC
spawn kube-scheduler "$K8S_BIN/kube-scheduler" --config "$state/scheduler.yaml" \
  --bind-address 127.0.0.1 --secure-port "$P_SCHED"
spawn kwok "$KWOK_BIN/kwok" --kubeconfig "$kubeconfig" --manage-all-nodes=true \
  --config "$KWOK_STAGES" --node-lease-duration-seconds 40 \
  --server-address "127.0.0.1:$P_KWOK" --node-ip 127.0.0.1 --cidr 10.244.0.1/16

kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$kubeconfig" "$@"; }
for i in $(seq 1 "$NODES"); do
  cat <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
status:
  allocatable: {cpu: "1000", memory: 4Ti, pods: "10000"}
  capacity: {cpu: "1000", memory: 4Ti, pods: "10000"}
---
NODE
done | kubectl apply -f - >/dev/null
wait_for "nodes Ready" 60 kubectl wait --for=condition=Ready node --all --timeout=1s
wait_for "default ServiceAccount" 60 kubectl get serviceaccount default -n default
trap - ERR
log "control plane ready in $((SECONDS - start)) s (kubernetes $("$K8S_BIN/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), $NODES kwok nodes); logs in $out/logs"
echo "export KUBECONFIG=$kubeconfig"
