#!/usr/bin/env bash
# The demo: installs dependencies, builds, starts a two-node local cluster with sluice-testbed and
# the sidecarless mesh (sluice-agent + sluice-ztunnel per node, sluice-cni in the CNI chain), runs
# nginx in a pod and sends real HTTP requests to it through the mesh (HBONE, mutual TLS with
# SPIFFE identities), shows that no iptables rule exists, applies a tenant isolation policy and
# shows the kernel refusing a cross-tenant connect(). Tears everything down at the end; set
# SLUICE_DEMO_KEEP=1 to keep the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "demo: needs root (network namespaces, cgroups, eBPF): sudo $0" >&2
    exit 1
fi
scripts/install-deps.sh
scripts/build.sh

TB=build/bin/sluice-testbed
NAME=demo
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
    if [[ ${SLUICE_DEMO_KEEP:-0} != 1 ]]; then
        step "tearing down"
        "$TB" down --name "$NAME"
    fi
}
trap cleanup EXIT

step "starting a 2-node cluster with the sidecarless mesh (agent + ztunnel per node; bridge + host-local + sluice-cni)"
"$TB" up --name "$NAME" --spec tests/testbed/examples/rag-demo.yaml --mesh sidecarless

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
cat >"$RUN/policies/boundaries.yaml" <<'YAML'
apiVersion: sluice.dev/v1alpha1
kind: IsolationBoundary
metadata: {name: tenant-a}
spec: {namespaces: [tenant-a]}
---
apiVersion: sluice.dev/v1alpha1
kind: IsolationBoundary
metadata: {name: tenant-b}
spec: {namespaces: [tenant-b]}
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

step "the registry the mesh reads (Kubernetes Pod/Service/EndpointSlice documents)"
ls "$RUN/registry"

step "demo done"
