#!/usr/bin/env bash
# Policy reload under load (issue 5): no allowed request may fail while the policy ConfigMap
# changes. A 2-node testbed cluster with the sidecarless mesh (sluice-agent + sluice-ztunnel per
# node); nginx in web/server (node1); load/client (node0) sends 1000 req/s for 10 s, each on a new
# connection (every one goes through the connect() hook, ztunnel and HBONE):
#   baseline  no policy change
#   reloads   the same load while the policies folder gets 10 kubelet-style `..data` swaps, each
#             a 10k-rule generation that changes every unrelated rule; each swap waits until both
#             agents have the previous generation in their maps (+0.5 s), so every swap becomes
#             a generation of its own, and the load stops after the last one (at most 120 s)
# Writes bench/results/policy-reload.{json,md}. Usage (root): bench/reload/run.sh [build dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
RATE=${SLUICE_BENCH_RATE:-1000}
SECONDS_PER_PHASE=${SLUICE_BENCH_SECONDS:-10}
SWAPS=${SLUICE_BENCH_SWAPS:-10}
TB=$BUILD/bin/sluice-testbed
NAME=rl$$
RUN=/var/run/sluice/testbed/$NAME
tmp=$(mktemp -d)
cleanup() {
    "$TB" down --name "$NAME" >/dev/null || echo "run.sh: $TB down --name $NAME left something" >&2
    rm -rf "$tmp"
}
trap cleanup EXIT

cat >"$tmp/cluster.yaml" <<YAML
name: $NAME
nodes: 2
mesh: sidecarless
namespaces:
  - {name: load, labels: {istio.io/dataplane-mode: ambient}}
  - {name: web, labels: {istio.io/dataplane-mode: ambient}}
pods:
  - {name: client, namespace: load, serviceAccount: client, node: 0, labels: {app: client}}
  - {name: server, namespace: web, serviceAccount: server, node: 1, labels: {app: server}}
YAML
"$TB" up --name "$NAME" --spec "$tmp/cluster.yaml" >/dev/null
SERVER_IP=$("$TB" status --name "$NAME" --json |
    python3 -c 'import json,sys; print(next(p["ip"] for p in json.load(sys.stdin)["pods"] if p["name"]=="server"))')

mkdir -p "$RUN/nginx"
cat >"$RUN/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $RUN/nginx; proxy_temp_path $RUN/nginx; fastcgi_temp_path $RUN/nginx;
    uwsgi_temp_path $RUN/nginx; scgi_temp_path $RUN/nginx;
    server { listen 8080 backlog=4096; location / { return 200 "ok\n"; } }
}
CONF
"$TB" exec --name "$NAME" --detach --log "$RUN/nginx/stdout.log" web/server -- \
    nginx -c "$RUN/nginx/nginx.conf" -g 'daemon off;' >/dev/null

# 1000 more workloads on ten nodes, then generation 0 of the policies (10 010 rules).
python3 bench/reload/policies.py registry "$RUN/registry"
python3 bench/reload/policies.py publish "$RUN/policies" 0
policy_settled() {  # both agents hold the 1002-object set and their last reload succeeded
    for n in 0 1; do
        "$BUILD/bin/sluicectl" policy status --json --run-dir "$RUN/node$n" 2>/dev/null |
            python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s.get("objects")==1002 and s["appliedGeneration"]==s["generation"] and s["lastReload"]["result"]!="failure" else 1)' ||
            return 1
    done
}
for _ in $(seq 200); do policy_settled && break; sleep 0.1; done
policy_settled || { echo "run.sh: the agents never applied generation 0" >&2; exit 1; }
# ztunnel learns the workloads and policies from the same folders; wait until requests pass.
for _ in $(seq 100); do
    "$TB" exec --name "$NAME" load/client -- curl -sf -o /dev/null --max-time 2 "http://$SERVER_IP:8080/" && break
    sleep 0.2
done
"$TB" exec --name "$NAME" load/client -- curl -sf -o /dev/null --max-time 2 "http://$SERVER_IP:8080/"

status_json() {  # both nodes' status documents, one after the other
    for n in 0 1; do "$BUILD/bin/sluicectl" policy status --json --run-dir "$RUN/node$n" || true; done
}
load() {  # $1: phase name, $2: seconds at most, then extra flags
    local phase=$1 seconds=$2
    shift 2
    "$TB" exec --name "$NAME" load/client -- "$(realpath "$BUILD")/bin/sluice-bench-http-load" \
        --target "$SERVER_IP:8080" --rate "$RATE" --seconds "$seconds" --threads 64 \
        --out "$tmp/$phase.samples" "$@" >"$tmp/$phase.summary" || true
}

echo "baseline: $RATE req/s for $SECONDS_PER_PHASE s, no policy change" >&2
load baseline "$SECONDS_PER_PHASE"
status_json >"$tmp/status-before.json"
echo "reloads: $RATE req/s during $SWAPS ConfigMap swaps (at most 120 s)" >&2
(sleep 0.5; python3 bench/reload/policies.py reload-loop "$RUN/policies" 1 "$SWAPS" 0.5 "$tmp/swaps.log" \
    "$tmp/stop" "$RUN/node0/policy-status.json" "$RUN/node1/policy-status.json") &
LOOP=$!
load reloads 120 --stop-file "$tmp/stop"
wait "$LOOP"
for _ in $(seq 100); do policy_settled && break; sleep 0.1; done
status_json >"$tmp/status-after.json"
for n in 0 1; do
    "$TB" exec --name "$NAME" --node "node$n" -- curl -s http://127.0.0.1:15030/metrics |
        grep -E '^sluice_policy_(reload_total|generation)' | sed "s/^/node$n /"
done >"$tmp/metrics.txt"
python3 bench/reload/report.py "$tmp" "bench/results" "bench/reload/run.sh $*" "$RATE"
