#!/usr/bin/env bash
# Mesh data-path overhead on the testbed (DESIGN.md §9, issue 4), all modes in one invocation, each
# on the same 2-node path: client pod bench/client on node0 → server pod bench/server on node1.
#   none         no mesh
#   sidecar      sluice-ztunnel --mode sidecar in both pods behind iptables REDIRECT (testbed)
#   sidecarless  sluice-agent (eBPF capture) + one sluice-ztunnel per node (testbed)
#   sidecarless-splice  the same with the agents' --same-node-splice (SLUICE_SAME_NODE_SPLICE=1,
#                passed through by the testbed): the app<->ztunnel hops on each node skip TCP
#   sidecarless-busy-poll  the same with the node ztunnels' --busy-poll-us 50 (SLUICE_BUSY_POLL_US,
#                passed through by the testbed)
#   haproxy      HAProxy mTLS sidecars, the outside reference: a client-side haproxy in the client
#                pod (iptables REDIRECT of the app ports, haproxy's own uid excluded) originating
#                TLS 1.3 with a client certificate to a server-side haproxy in the server pod
#                (iptables PREROUTING REDIRECT of the app ports) that verifies it and forwards to
#                the app on 127.0.0.1. Certificates are minted from the sidecar cluster's CA.
# The clusters are up at the same time and the workloads run interleaved (each workload for
# every mode, round after round), so load from elsewhere on the machine hits all modes alike.
# Workloads (client pod → server pod IP): wrk -c1 latency and wrk -c32 requests/s against nginx,
# iperf3 bulk; RSS of the node ztunnels idle and while N connections are held open through them.
# Writes bench/results/mesh.{json,md}.
# Usage (root): bench/mesh/run.sh [build dir]
#   SLUICE_BENCH_SECONDS per run (5), SLUICE_BENCH_ROUNDS (3), SLUICE_BENCH_CONNS held (10000),
#   SLUICE_BENCH_KEEP=1 keeps the clusters and files (debugging; `sluice-testbed down` them after)
#   SLUICE_BENCH_ONLY=rss: only the sidecarless cluster and the ztunnel RSS part (idle, then
#     SLUICE_BENCH_CONNS held), for iterating on memory. Prints one JSON line to stdout (and to
#     SLUICE_BENCH_RSS_OUT if set); bench/results/ is left alone. SLUICE_BENCH_AT_HOLD="command"
#     runs with the node ztunnel pids as arguments while the connections are held (after the
#     sample), e.g. to read their heap.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
TB="$BUILD/bin/sluice-testbed"
SECS=${SLUICE_BENCH_SECONDS:-5}
ROUNDS=${SLUICE_BENCH_ROUNDS:-3}
CONNS=${SLUICE_BENCH_CONNS:-10000}
HOLD_DEADLINE=240  # seconds: at most half of it to open the connections, the rest to hold them
ONLY=${SLUICE_BENCH_ONLY:-}
MODES=(none sidecar sidecarless sidecarless-splice sidecarless-busy-poll haproxy)
[[ $ONLY == rss ]] && MODES=(sidecarless)
[[ -z $ONLY || $ONLY == rss ]] || { echo "SLUICE_BENCH_ONLY: only 'rss' is known" >&2; exit 1; }
declare -A NAME=([none]=bmn$$ [sidecar]=bms$$ [sidecarless]=bmz$$ [sidecarless-splice]=bmp$$
    [sidecarless-busy-poll]=bmb$$ [haproxy]=bmh$$)
declare -A MESH=([none]=none [sidecar]=sidecar [sidecarless]=sidecarless
    [sidecarless-splice]=sidecarless [sidecarless-busy-poll]=sidecarless [haproxy]=none)
declare -A SPLICE=([sidecarless-splice]=1)  # SLUICE_SAME_NODE_SPLICE for the mode's agents
declare -A BUSY_POLL_US=([sidecarless-busy-poll]=50)  # SLUICE_BUSY_POLL_US for its ztunnels
declare -A SIP
HAPROXY_UID=65534  # haproxy drops to nobody: its own connections are excluded from the capture
APP_PORTS=(8080 5201)  # nginx, iperf3

if [[ $(id -u) -ne 0 ]]; then
    echo "bench/mesh/run.sh: needs root (the testbed)" >&2
    exit 1
fi
tmp=$(mktemp -d /tmp/sluice-bench-mesh.XXXXXX)
chmod 755 "$tmp"
cleanup() {
    if [[ ${SLUICE_BENCH_KEEP:-0} == 1 ]]; then
        echo "kept: clusters ${NAME[*]}, files $tmp" >&2
        return
    fi
    for m in "${MODES[@]}"; do
        "$TB" down --name "${NAME[$m]}" >/dev/null 2>&1 || echo "down ${NAME[$m]} left something" >&2
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

ex() {  # mode [exec options] pod -- command…
    local m=$1
    shift
    "$TB" exec --name "${NAME[$m]}" "$@"
}
status_py() {  # mode python-expression over the status JSON `s`
    "$TB" status --name "${NAME[$1]}" --json | python3 -c "import json,sys; s=json.load(sys.stdin); print($2)"
}
ztunnel_pids() {  # mode: the pids of its sluice-ztunnel daemons, node0 first
    status_py "$1" '" ".join(str(d["pid"]) for d in sorted(s["daemons"], key=lambda d: (d["node"], d["pod"])) if d["name"] == "sluice-ztunnel")'
}
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
rss_all() {  # pids…: "kib kib …"
    local vals=()
    for p in "$@"; do vals+=("$(rss_kib "$p")"); done
    echo "${vals[*]}"
}

cat >"$tmp/cluster.yaml" <<'YAML'
name: bench
nodes: 2
namespaces:
  - name: bench
    labels: {istio.io/dataplane-mode: ambient}
pods:
  - {name: client, namespace: bench, serviceAccount: client, node: 0}
  - {name: server, namespace: bench, serviceAccount: server, node: 1}
YAML

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for m in "${MODES[@]}"; do
    mkdir -p "$tmp/$m"
    echo "== up ${NAME[$m]} ($m)"
    if [[ -n ${SPLICE[$m]:-} ]]; then
        SLUICE_SAME_NODE_SPLICE=1 "$TB" up --name "${NAME[$m]}" --spec "$tmp/cluster.yaml" \
            --mesh "${MESH[$m]}" >"$tmp/$m/up.log"
        grep -q "same-node splice on" "$(status_py "$m" 's["nodes"][0]["runDir"]')/agent.log" ||
            { echo "$m: the agent did not turn same-node splice on" >&2; exit 1; }
    elif [[ -n ${BUSY_POLL_US[$m]:-} ]]; then
        SLUICE_BUSY_POLL_US=${BUSY_POLL_US[$m]} "$TB" up --name "${NAME[$m]}" \
            --spec "$tmp/cluster.yaml" --mesh "${MESH[$m]}" >"$tmp/$m/up.log"
        for p in $(ztunnel_pids "$m"); do
            tr '\0' '\n' <"/proc/$p/environ" | grep -qx "SLUICE_BUSY_POLL_US=${BUSY_POLL_US[$m]}" ||
                { echo "$m: ztunnel $p runs without busy polling" >&2; exit 1; }
        done
    else
        "$TB" up --name "${NAME[$m]}" --spec "$tmp/cluster.yaml" --mesh "${MESH[$m]}" >"$tmp/$m/up.log"
    fi
    SIP[$m]=$(status_py "$m" 'next(p["ip"] for p in s["pods"] if p["name"] == "server")')
done

# Idle RSS: every ztunnel is up and ready, nothing was sent yet.
sleep 2
declare -A IDLE_RSS
for m in sidecar sidecarless; do
    [[ -n ${NAME[$m]:-} && " ${MODES[*]} " == *" $m "* ]] || continue
    # shellcheck disable=SC2046
    IDLE_RSS[$m]=$(rss_all $(ztunnel_pids "$m"))
done

# The full run's apps and workloads (not indented: the heredocs end in column 0).
if [[ $ONLY != rss ]]; then
# The apps, the same in every mode.
for m in "${MODES[@]}"; do
    d="$tmp/$m"
    cat >"$d/nginx.conf" <<CONF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path $d; proxy_temp_path $d; fastcgi_temp_path $d; uwsgi_temp_path $d;
    scgi_temp_path $d;
    server {
        listen 8080;
        location / { return 200 "ok\n"; }
    }
}
CONF
    ex "$m" --detach --log "$d/nginx.log" bench/server -- nginx -c "$d/nginx.conf" -g 'daemon off;' >/dev/null
    ex "$m" --detach --log "$d/iperf3.log" bench/server -- iperf3 -s -p 5201 >/dev/null
done

# HAProxy mTLS sidecars with certificates from the testbed CA.
h="$tmp/haproxy"
CA_DIR=$(status_py sidecar 's["caDir"]')
for who in client server; do
    "$BUILD/bin/sluice-ztunnel" ca mint --dir "$CA_DIR" \
        --identity "spiffe://cluster.local/ns/bench/sa/$who" --out "$h/$who" >/dev/null
    cat "$h/$who.crt" "$h/$who.key" >"$h/$who.pem"
done
haproxy_global="global
  nbthread 2
  maxconn 4096
  uid $HAPROXY_UID
  gid $HAPROXY_UID
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s"
{
    echo "$haproxy_global"
    for i in "${!APP_PORTS[@]}"; do
        port=${APP_PORTS[$i]}
        echo "listen out_$port
  bind 127.0.0.1:$((15001 + i))
  server s ${SIP[haproxy]}:$port ssl crt $h/client.pem ca-file $CA_DIR/ca.crt verify required ssl-min-ver TLSv1.3"
    done
} >"$h/client.cfg"
{
    echo "$haproxy_global"
    for i in "${!APP_PORTS[@]}"; do
        port=${APP_PORTS[$i]}
        echo "listen in_$port
  bind :$((15006 + i)) ssl crt $h/server.pem ca-file $CA_DIR/ca.crt verify required ssl-min-ver TLSv1.3
  server app 127.0.0.1:$port"
    done
} >"$h/server.cfg"
ex haproxy bench/client -- iptables -t nat -A OUTPUT -p tcp -m owner --uid-owner "$HAPROXY_UID" -j RETURN
for i in "${!APP_PORTS[@]}"; do
    port=${APP_PORTS[$i]}
    ex haproxy bench/client -- iptables -t nat -A OUTPUT -p tcp -d "${SIP[haproxy]}" --dport "$port" \
        -j REDIRECT --to-ports $((15001 + i))
    ex haproxy bench/server -- iptables -t nat -A PREROUTING -p tcp --dport "$port" \
        -j REDIRECT --to-ports $((15006 + i))
done
ex haproxy --detach --log "$h/server.log" bench/server -- haproxy -db -f "$h/server.cfg" >/dev/null
ex haproxy --detach --log "$h/client.log" bench/client -- haproxy -db -f "$h/client.cfg" >/dev/null

# Every path answers before measuring (ztunnel learns new pods from the registry a moment later).
for m in "${MODES[@]}"; do
    ok=0
    for _ in $(seq 80); do
        if ex "$m" bench/client -- curl -s -o /dev/null --max-time 2 "http://${SIP[$m]}:8080/"; then
            ok=1
            break
        fi
        sleep 0.25
    done
    [[ $ok == 1 ]] || { echo "$m: client cannot reach the server" >&2; exit 1; }
done

# The workloads, interleaved by mode.
out="$tmp/out"
mkdir -p "$out"
for r in $(seq "$ROUNDS"); do
    echo "== round $r/$ROUNDS"
    for c in 1 32; do
        for m in "${MODES[@]}"; do
            ex "$m" bench/client -- timeout $((SECS + 30)) \
                wrk -t1 -c"$c" -d"${SECS}s" --latency "http://${SIP[$m]}:8080/" >"$out/$m-c$c-$r.txt"
        done
    done
    for m in "${MODES[@]}"; do
        ex "$m" bench/client -- timeout $((SECS + 30)) \
            iperf3 -c "${SIP[$m]}" -p 5201 -t "$SECS" -J >"$out/$m-iperf-$r.json"
    done
done
fi

# Sidecarless: ztunnel RSS after the load (connections closed) and with CONNS held open.
# shellcheck disable=SC2046
AFTER_RSS=$(rss_all $(ztunnel_pids sidecarless))
z="$tmp/sidecarless"
ex sidecarless --detach --log "$z/serve.log" bench/server -- python3 "$PWD/bench/mesh/conns.py" serve 9000 >/dev/null
for _ in $(seq 50); do
    ex sidecarless bench/server -- python3 -c \
        'import socket; socket.create_connection(("127.0.0.1", 9000), 1)' 2>/dev/null && break
    sleep 0.1
done
if [[ $ONLY == rss ]]; then
    # Without the workloads before, nothing has proven the mesh path yet: one echoed
    # connection through it (the stop file exists, so the holder closes it at once).
    touch "$z/probe-stop"
    ok=0
    for _ in $(seq 80); do
        if ex sidecarless bench/client -- python3 "$PWD/bench/mesh/conns.py" hold \
            "${SIP[sidecarless]}" 9000 1 4 "$z/probe-stop" 2>/dev/null | grep -q '^open 1 '; then
            ok=1
            break
        fi
        sleep 0.25
    done
    [[ $ok == 1 ]] || { echo "sidecarless: client cannot reach the echo server" >&2; exit 1; }
fi
ex sidecarless --detach --log "$z/hold.log" bench/client -- python3 "$PWD/bench/mesh/conns.py" hold \
    "${SIP[sidecarless]}" 9000 "$CONNS" "$HOLD_DEADLINE" "$z/stop" >/dev/null
for _ in $(seq $((HOLD_DEADLINE * 10))); do
    grep -q '^open' "$z/hold.log" 2>/dev/null && break
    sleep 0.1
done
sleep 2  # let the allocator settle before sampling
HELD=$(grep -m1 '^open' "$z/hold.log" || echo "open 0 (the holder did not report)")
# shellcheck disable=SC2046
HELD_RSS=$(rss_all $(ztunnel_pids sidecarless))
HELD_FDS=""
for p in $(ztunnel_pids sidecarless); do HELD_FDS+="$(find /proc/"$p"/fd -mindepth 1 | wc -l) "; done
if [[ -n ${SLUICE_BENCH_AT_HOLD:-} ]]; then
    # shellcheck disable=SC2046
    $SLUICE_BENCH_AT_HOLD $(ztunnel_pids sidecarless) >&2 || echo "SLUICE_BENCH_AT_HOLD failed" >&2
fi
touch "$z/stop"
for _ in $(seq 300); do
    grep -q '^closed' "$z/hold.log" && break
    sleep 0.1
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

if [[ $ONLY == rss ]]; then
    line="{\"conns_target\": $CONNS, \"idle_rss_kib\": [${IDLE_RSS[sidecarless]// /, }],"
    line+=" \"held\": \"$HELD\", \"held_rss_kib\": [${HELD_RSS// /, }],"
    line+=" \"held_fds\": [$(echo "$HELD_FDS" | xargs | sed 's/ /, /g')],"
    line+=" \"load_before\": \"$load_before\", \"load_after\": \"$load_after\"}"
    echo "$line"
    [[ -z ${SLUICE_BENCH_RSS_OUT:-} ]] || echo "$line" >"$SLUICE_BENCH_RSS_OUT"
    exit 0
fi

machine="$(uname -srm), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
python3 bench/mesh/report.py "$out" <<JSON
{"machine": "$machine", "seconds": $SECS, "rounds": $ROUNDS, "conns_target": $CONNS,
 "load_before": "$load_before", "load_after": "$load_after",
 "idle_rss_kib": {"sidecar": [${IDLE_RSS[sidecar]// /, }], "sidecarless": [${IDLE_RSS[sidecarless]// /, }]},
 "after_load_rss_kib": [${AFTER_RSS// /, }], "held": "$HELD", "held_rss_kib": [${HELD_RSS// /, }],
 "held_fds": [$(echo "$HELD_FDS" | xargs | sed 's/ /, /g')]}
JSON
cat bench/results/mesh.md
