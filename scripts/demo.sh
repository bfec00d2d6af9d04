#!/usr/bin/env bash
# The demo: installs dependencies, builds, starts a two-node local cluster with sluice-testbed and
# the sidecarless mesh (sluice-agent + sluice-ztunnel per node, sluice-cni in the CNI chain), runs
# nginx in a pod and sends real HTTP requests to it through the mesh (HBONE, mutual TLS with
# SPIFFE identities), shows that no iptables rule exists, applies a tenant isolation policy and
# shows the kernel refusing a cross-tenant connect(), then sends OpenAI-style chat completions
# through sluice-waypoint until tenant-a exceeds its token budget and gets a 429 while tenant-b is
# still served (the model servers are an OpenAI-compatible emulator: a test fixture, no model
# runs here). Tears everything down at the end; set SLUICE_DEMO_KEEP=1 to keep the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "demo: needs root (network namespaces, cgroups, eBPF): sudo $0" >&2
    exit 1
fi
scripts/install-deps.sh
scripts/build.sh

TB=build/bin/sluice-testbed
NAME=${SLUICE_DEMO_NAME:-demo}  # cluster name (set it to run beside another demo)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
    if [[ ${SLUICE_DEMO_KEEP:-0} != 1 ]]; then
        step "tearing down"
        "$TB" down --name "$NAME"
    fi
}
trap cleanup EXIT

step "starting a 2-node cluster with the sidecarless mesh (agent + ztunnel per node; bridge + host-local + sluice-cni) and a waypoint"
"$TB" up --name "$NAME" --spec tests/testbed/examples/rag-demo.yaml --mesh sidecarless --waypoint

RUN=/var/run/sluice/testbed/$NAME
RETRIEVER_IP=$("$TB" status --name "$NAME" --json |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print(next(p["ip"] for p in s["pods"] if p["name"]=="retriever"))')

step "nginx in tenant-a/retriever (node1) on $RETRIEVER_IP:8080"
mkdir -p "$RUN/nginx"
cat >"$RUN/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/error.log;
events { worker_connections 256; }
http {
    access_log $RUN/nginx/access.log;
    client_body_temp_path $RUN/nginx;
    proxy_temp_path $RUN/nginx;
    fastcgi_temp_path $RUN/nginx;
    uwsgi_temp_path $RUN/nginx;
    scgi_temp_path $RUN/nginx;
    server {
        listen 8080;
        listen [::]:8080;
        location / { return 200 "retriever on \$server_addr answered \$remote_addr\n"; }
    }
}
CONF
"$TB" exec --name "$NAME" --detach --log "$RUN/nginx/stdout.log" tenant-a/retriever -- \
    nginx -c "$RUN/nginx/nginx.conf" -g 'daemon off;' >/dev/null
for _ in $(seq 50); do
    "$TB" exec --name "$NAME" tenant-a/retriever -- curl -s -o /dev/null "http://127.0.0.1:8080/" && break
    sleep 0.1
done

# ztunnel learns the new pods' addresses from the registry a moment after they start.
for _ in $(seq 40); do
    "$TB" exec --name "$NAME" tenant-a/frontend -- curl -s -o /dev/null --max-time 2 "http://$RETRIEVER_IP:8080/" && break
    sleep 0.25
done
step "tenant-a/frontend (node0) -> retriever (node1) through the mesh"
"$TB" exec --name "$NAME" tenant-a/frontend -- curl -sS --max-time 5 "http://$RETRIEVER_IP:8080/"
step "ztunnel's access log: HBONE to :15008, both SPIFFE identities (mutual TLS)"
tail -n 1 "$RUN/node0/ztunnel-access.log" | python3 -m json.tool
step "the certificate the retriever presents on the wire (openssl s_client against its :15008)"
"$TB" exec --name "$NAME" tenant-a/frontend -- sh -c \
    "openssl s_client -connect $RETRIEVER_IP:15008 -alpn h2 -tls1_3 </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName" || true

step "captured by eBPF: enrolled pods on node0, and not a single iptables rule in the pod"
build/bin/sluicectl pods --bpffs-root "/sys/fs/bpf/sluice/$NAME/node0" --run-dir "$RUN/node0"
"$TB" exec --name "$NAME" tenant-a/frontend -- sh -c 'echo "iptables rules in tenant-a/frontend: $(iptables-save | grep -c "^-A" || true)"'

step "tenant isolation: tenant-b may not reach tenant-a (policies/ folder = the ConfigMap mount)"
# Both tenants may still use the shared AI gateway (namespace ai, port 8080).
cat >"$RUN/policies/boundaries.yaml" <<'YAML'
apiVersion: sluice.dev/v1alpha1
kind: IsolationBoundary
metadata: {name: tenant-a}
spec:
  namespaces: [tenant-a]
  allowTo: [{namespaces: [ai], ports: [8080]}]
---
apiVersion: sluice.dev/v1alpha1
kind: IsolationBoundary
metadata: {name: tenant-b}
spec:
  namespaces: [tenant-b]
  allowTo: [{namespaces: [ai], ports: [8080]}]
YAML
sleep 1.5
echo "tenant-b/frontend -> retriever:"
"$TB" exec --name "$NAME" tenant-b/frontend -- python3 -c "
import socket
s = socket.socket()
try:
    s.connect(('$RETRIEVER_IP', 8080)); print('  connected (unexpected)')
except OSError as e:
    print('  connect() failed:', e)"
echo "audit line on node1:"
tail -n 1 "$RUN/node1/audit.log"
echo "tenant-a/frontend -> retriever still works:"
"$TB" exec --name "$NAME" tenant-a/frontend -- curl -sS --max-time 5 "http://$RETRIEVER_IP:8080/"

step "token budgets at the waypoint (ai/waypoint in front of ai/llm-0, ai/llm-1: OpenAI-compatible emulators, a test fixture)"
STATUS=$("$TB" status --name "$NAME" --json)
waypoint_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)["waypoint"][sys.argv[1]])' "$1" <<<"$STATUS"; }
GATEWAY=$(waypoint_field gateway)
METRICS=$(waypoint_field metrics)
WAYPOINT_LOG=$(waypoint_field log)
echo "waypoint gateway $GATEWAY (status --json .waypoint.gateway), metrics $METRICS"
# One TokenBudget per tenant (policies library schema), tokens per minute.
for budget in tenant-a:200 tenant-b:20000; do
    printf -- '---\napiVersion: sluice.dev/v1alpha1\nkind: TokenBudget\nmetadata: {name: %s, namespace: ai}\nspec:\n  tenant: {header: %s}\n  limits: {tokensPerMinute: %s}\n' \
        "${budget%:*}" "${budget%:*}" "${budget#*:}"
done >"$RUN/budgets.yaml.tmp"
mv "$RUN/budgets.yaml.tmp" "$RUN/policies/budgets.yaml"
cat "$RUN/policies/budgets.yaml"
# chat <tenant> [curl args...]: one chat completion from the tenant's frontend pod.
chat() {
    local tenant=$1
    shift
    "$TB" exec --name "$NAME" "$tenant/frontend" -- curl -sS --max-time 10 "$@" \
        -H 'content-type: application/json' -H "x-tenant: $tenant" \
        -d '{"model":"gpt-4o-mini","max_tokens":60,"messages":[{"role":"user","content":"Summarise the retrieved passages about token budgets."}]}' \
        "http://$GATEWAY/v1/chat/completions"
}
# The waypoint reloads the folder within a second; wait until tenant-a's limit shows up.
for _ in $(seq 40); do
    chat tenant-a -o /dev/null -D - 2>/dev/null | grep -qi '^x-ratelimit-limit-tokens: 200' && break
    sleep 0.25
done
echo "tenant-a/frontend sends chat completions (through ztunnel) until its budget of 200 tokens/min is spent:"
for i in $(seq 30); do
    code=$(chat tenant-a -o "$RUN/reply.json" -w '%{http_code}' || true)
    if [[ $code == 200 ]]; then
        echo "  request $i: 200  usage $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["usage"])' "$RUN/reply.json")"
    else
        echo "  request $i: $code"
        break
    fi
done
echo "the client -> waypoint hop in ztunnel's access log (both SPIFFE identities; both pods are on"
echo "node0, so ztunnel hands it from its outbound to its inbound side without an HBONE hop):"
grep -h "\"dst.addr\":\"$GATEWAY\"" "$RUN"/node*/ztunnel-access.log | grep '"direction":"outbound"' | tail -n 1 |
    python3 -c 'import json,sys; e=json.loads(sys.stdin.read()); print("  %s -> %s %s: %s" % (e["src.identity"], e["dst.identity"], "same node, in-process" if e.get("same_node") else "via HBONE " + e["dst.hbone_addr"], e["result"]))' ||
    echo "  (no line yet)"
echo "the refusal, as an OpenAI client sees it:"
chat tenant-a -i || true
echo
echo "tenant-b/frontend at the same moment:"
chat tenant-b -i || true
echo
echo "the waypoint's access log line for the 429:"
grep '"status":429' "$WAYPOINT_LOG" | tail -n 1 | sed 's/.*access //' | python3 -m json.tool
echo "its metrics (read inside ai/waypoint: the tenants' boundaries let them reach port 8080 only):"
"$TB" exec --name "$NAME" ai/waypoint -- curl -sS --max-time 5 "http://127.0.0.1:${METRICS##*:}/metrics" |
    grep -E '^(sluice_requests_rejected_total|sluice_budget_remaining_tokens|sluice_gen_ai_tokens_total)' || true

step "the registry the mesh reads (Kubernetes Pod/Service/EndpointSlice documents)"
ls "$RUN/registry"

step "demo done"
