#!/usr/bin/env bash
# The demo: installs dependencies, builds, starts a two-node local cluster with sluice-testbed,
# runs nginx in a pod on one node and sends real HTTP requests to it from pods on both nodes,
# then tears everything down. Set SLUICE_DEMO_KEEP=1 to leave the cluster up afterwards.
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

step "starting a 2-node cluster (network namespaces, real CNI bridge + host-local plugins)"
"$TB" up --name "$NAME" --spec tests/testbed/examples/rag-demo.yaml

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

step "tenant-a/frontend (node0) -> retriever across nodes, IPv4"
"$TB" exec --name "$NAME" tenant-a/frontend -- curl -sS --max-time 5 "http://$RETRIEVER_IP:8080/"
RETRIEVER_IP6=$("$TB" status --name "$NAME" --json |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print(next(p["ip6"] for p in s["pods"] if p["name"]=="retriever"))')
step "tenant-a/frontend (node0) -> retriever across nodes, IPv6"
"$TB" exec --name "$NAME" tenant-a/frontend -- curl -sS --max-time 5 "http://[$RETRIEVER_IP6]:8080/"
step "tenant-b/frontend (node1) -> retriever on the same node"
"$TB" exec --name "$NAME" tenant-b/frontend -- curl -sS --max-time 5 "http://$RETRIEVER_IP:8080/"

step "no iptables rule in any pod (sluice captures traffic with eBPF, not iptables)"
"$TB" exec --name "$NAME" tenant-a/frontend -- sh -c 'echo "iptables-save lines: $(iptables-save | grep -c "^-A" || true)"'

step "the registry the mesh reads (Kubernetes Pod/Service/EndpointSlice documents)"
ls "$RUN/registry"

step "demo done"
