# Shared by the waypoint bench scripts (sourced): a temp folder and the processes started into
# `pids`, both removed on exit, and loopback port helpers.
tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_port PORT [TRIES]: up to TRIES × 50 ms (default 100: 5 s).
wait_port() {
    for _ in $(seq "${2:-100}"); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 did not open" >&2
    return 1
}

# The bench's waypoint config: one pool at $1 (host:port) taking every model, and a TokenBudget
# per x-tenant header whose limits are never reached (budgets on, as in production, without 429s).
bench_config() {
    cat <<CONF
apiVersion: sluice.dev/v1alpha1
kind: Waypoint
metadata: {name: bench}
spec:
  accessLog: false
  pools: [{name: main, endpoints: ["$1"]}]
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {name: all}
spec: {models: ["*"], backends: [{pool: main}]}
---
apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: bench}
spec:
  tenantFrom: [{header: x-tenant}]
  limits: [{tenant: "*", tokensPerMinute: 1000000000000, requestsPerMinute: 1000000000000}]
CONF
}
