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
# Workloads (client pod → server pod IP): wrk -c1 latency and wrk -c32 requests/s against nginx
# (with the proxies' and the machine's CPU time per request), open-loop latency at fixed rates
# (sluice-bench-http-load --keep-alive), iperf3 bulk cross node and to a pod on the client's own
# node (bench/local); RSS of the node ztunnels idle and while N connections are held open through
# them. A seventh cluster, sidecarless with `up --waypoint`, measures a chat request to nginx
# through the waypoint against the same request without it. Last, the proxies' memory as pods
# per node grow, on 1-node clusters of 1…50 idle pods: one sluice-ztunnel per pod (sidecar), one
# per node + the agent (sidecarless), one HAProxy per pod. Writes bench/results/mesh.{json,md}
# and the plots mesh-modes.png and mesh-memory.png (bench/mesh/plot.py).
# Usage (root): bench/mesh/run.sh [build dir]
#   SLUICE_BENCH_SECONDS per run (5), SLUICE_BENCH_ROUNDS (3), SLUICE_BENCH_CONNS held (10000),
#   SLUICE_BENCH_RATES fixed request rates ("1000 5000"), SLUICE_BENCH_PODS pods per node for the
#   memory scaling ("1 10 25 50"),
#   SLUICE_BENCH_KEEP=1 keeps the clusters and files (debugging; `sluice-testbed down` them after)
#   SLUICE_BENCH_ONLY=rss: only the sidecarless cluster and the ztunnel RSS part (idle, then
#     SLUICE_BENCH_CONNS held), for iterating on memory. Prints one JSON line to stdout (and to
#     SLUICE_BENCH_RSS_OUT if set); bench/results/ is left alone. SLUICE_BENCH_AT_HOLD="command"
#     runs with the node ztunnel pids as arguments while the connections are held (after the
#     sample), e.g. to read their heap.
#   SLUICE_BENCH_ONLY=pods: only the memory scaling; prints its JSON to stdout, results left alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
TB="$BUILD/bin/sluice-testbed"
SECS=${SLUICE_BENCH_SECONDS:-5}
ROUNDS=${SLUICE_BENCH_ROUNDS:-3}
CONNS=${SLUICE_BENCH_CONNS:-10000}
HOLD_DEADLINE=240  # seconds: at most half of it to open the connections, the rest to hold them
read -r -a RATES <<<"${SLUICE_BENCH_RATES:-1000 5000}"
read -r -a POD_COUNTS <<<"${SLUICE_BENCH_PODS:-1 10 25 50}"
ONLY=${SLUICE_BENCH_ONLY:-}
MODES=(none sidecar sidecarless sidecarless-splice sidecarless-busy-poll haproxy)
[[ $ONLY == rss ]] && MODES=(sidecarless)
[[ $ONLY == pods ]] && MODES=()
[[ -z $ONLY || $ONLY == rss || $ONLY == pods ]] ||
    { echo "SLUICE_BENCH_ONLY: only 'rss' and 'pods' are known" >&2; exit 1; }
declare -A NAME=([none]=bmn$$ [sidecar]=bms$$ [sidecarless]=bmz$$ [sidecarless-splice]=bmp$$
    [sidecarless-busy-poll]=bmb$$ [haproxy]=bmh$$ [waypoint]=bmw$$)
SCALE_NAME=bmr$$  # the 1-node clusters of the memory scaling, one at a time
declare -A MESH=([none]=none [sidecar]=sidecar [sidecarless]=sidecarless
    [sidecarless-splice]=sidecarless [sidecarless-busy-poll]=sidecarless [haproxy]=none)
declare -A SPLICE=([sidecarless-splice]=1)  # SLUICE_SAME_NODE_SPLICE for the mode's agents
declare -A BUSY_POLL_US=([sidecarless-busy-poll]=50)  # SLUICE_BUSY_POLL_US for its ztunnels
declare -A SIP LIP
HAPROXY_PIDS=""
HAPROXY_UID=65534  # haproxy drops to nobody: its own connections are excluded from the capture
APP_PORTS=(8080 5201)  # nginx, iperf3
# nginx's answer to /v1/chat/completions (the backend behind the waypoint), as bench/waypoint's.
CHAT_REPLY='{"id":"cmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"I am fine."},"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":4,"total_tokens":18}}'


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
    for n in "${MODES[@]}" $([[ -z $ONLY ]] && echo waypoint); do
        "$TB" down --name "${NAME[$n]}" >/dev/null 2>&1 || echo "down ${NAME[$n]} left something" >&2
    done
    "$TB" down --name "$SCALE_NAME" >/dev/null 2>&1 || echo "down $SCALE_NAME left something" >&2
    rm -rf "$tmp"
}
trap cleanup EXIT

ex() {  # mode [exec options] pod -- command…
    local m=$1
    shift
    "$TB" exec --name "${NAME[$m]}" "$@"
}
ex_scale() {  # [exec options] pod -- command… in the memory-scaling cluster
    "$TB" exec --name "$SCALE_NAME" "$@"
}
status_py() {  # mode python-expression over the status JSON `s`
    "$TB" status --name "${NAME[$1]}" --json | python3 -c "import json,sys; s=json.load(sys.stdin); print($2)"
}
daemon_pids() {  # cluster name, daemon name: their pids, node0 first
    "$TB" status --name "$1" --json | python3 -c "import json,sys; s=json.load(sys.stdin); print(' '.join(str(d['pid']) for d in sorted(s['daemons'], key=lambda d: (d['node'], d['pod'])) if d['name'] == '$2'))"
}
ztunnel_pids() {  # mode: the pids of its sluice-ztunnel daemons, node0 first
    daemon_pids "${NAME[$1]}" sluice-ztunnel
}
proxy_pids() {  # mode: the pids of the proxies that carry its traffic
    case $1 in
        none) ;;
        haproxy) echo "$HAPROXY_PIDS" ;;
        *) ztunnel_pids "$1" ;;
    esac
}
cpu_ticks() {  # pids…: user + system clock ticks used so far, summed
    local sum=0 p
    for p in "$@"; do sum=$((sum + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}'))); done
    echo "$sum"
}
machine_busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
rss_all() {  # pids…: "kib kib …"
    local vals=()
    for p in "$@"; do vals+=("$(rss_kib "$p")"); done
    echo "${vals[*]}"
}

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

cat >"$tmp/cluster.yaml" <<'YAML'
name: bench
nodes: 2
namespaces:
  - name: bench
    labels: {istio.io/dataplane-mode: ambient}
pods:
  - {name: client, namespace: bench, serviceAccount: client, node: 0}
  - {name: server, namespace: bench, serviceAccount: server, node: 1}
  - {name: local, namespace: bench, serviceAccount: server, node: 0}
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
    LIP[$m]=$(status_py "$m" 'next(p["ip"] for p in s["pods"] if p["name"] == "local")')
done

# Idle RSS: every ztunnel is up and ready, nothing was sent yet.
sleep 2
declare -A IDLE_RSS
for m in sidecar sidecarless; do
    [[ " ${MODES[*]} " == *" $m "* ]] || continue
    # shellcheck disable=SC2046
    IDLE_RSS[$m]=$(rss_all $(ztunnel_pids "$m"))
done

# The full run's apps and workloads (not indented: the heredocs end in column 0).
if [[ -z $ONLY ]]; then
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
        location /v1/chat/completions {  # for the waypoint: a static OpenAI-shaped reply
            default_type application/json;
            return 200 '$CHAT_REPLY';
        }
    }
}
CONF
    ex "$m" --detach --log "$d/nginx.log" bench/server -- nginx -c "$d/nginx.conf" -g 'daemon off;' >/dev/null
    ex "$m" --detach --log "$d/iperf3.log" bench/server -- iperf3 -s -p 5201 >/dev/null
    ex "$m" --detach --log "$d/iperf3-local.log" bench/local -- iperf3 -s -p 5201 >/dev/null
done

# HAProxy mTLS sidecars with certificates from the testbed CA.
h="$tmp/haproxy"
CA_DIR=$(status_py sidecar 's["caDir"]')
for who in client server; do
    "$BUILD/bin/sluice-ztunnel" ca mint --dir "$CA_DIR" \
        --identity "spiffe://cluster.local/ns/bench/sa/$who" --out "$h/$who" >/dev/null
    cat "$h/$who.crt" "$h/$who.key" >"$h/$who.pem"
done

{
    echo "$haproxy_global"
    for i in "${!APP_PORTS[@]}"; do
        port=${APP_PORTS[$i]}
        echo "listen out_$port
  bind 127.0.0.1:$((15001 + i))
  server s ${SIP[haproxy]}:$port ssl crt $h/client.pem ca-file $CA_DIR/ca.crt verify required ssl-min-ver TLSv1.3"
    done
    echo "listen out_local_5201
  bind 127.0.0.1:15011
  server s ${LIP[haproxy]}:5201 ssl crt $h/client.pem ca-file $CA_DIR/ca.crt verify required ssl-min-ver TLSv1.3"
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
    for pod in server local; do
        ex haproxy bench/$pod -- iptables -t nat -A PREROUTING -p tcp --dport "$port" \
            -j REDIRECT --to-ports $((15006 + i))
    done
done
ex haproxy bench/client -- iptables -t nat -A OUTPUT -p tcp -d "${LIP[haproxy]}" --dport 5201 \
    -j REDIRECT --to-ports 15011
for pod in server local client; do
    cfg=$h/server.cfg
    [[ $pod == client ]] && cfg=$h/client.cfg
    HAPROXY_PIDS+="$(ex haproxy --detach --log "$h/$pod.log" bench/$pod -- haproxy -db -f "$cfg") "
done

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

# Sidecarless + waypoint (DESIGN.md §9): its own sidecarless cluster with `up --waypoint`.
# The client calls the service ai/llm (its VIP; the service uses the waypoint), and a ModelRoute
# in the policies folder sends model "bench" to nginx in the server pod; the same request straight
# to the server pod's IP is the path without a waypoint. Both: client pod on node0 → nginx on node1.
# With the waypoint: client → node0 ztunnel → HBONE → waypoint (node0) → node0 ztunnel → HBONE →
# node1 ztunnel → nginx; without: client → node0 ztunnel → HBONE → node1 ztunnel → nginx.
w="$tmp/waypoint"
mkdir -p "$w"
echo "== up ${NAME[waypoint]} (sidecarless + waypoint)"
"$TB" up --name "${NAME[waypoint]}" --spec "$tmp/cluster.yaml" --mesh sidecarless --waypoint >"$w/up.log"
W_SIP=$(status_py waypoint 'next(p["ip"] for p in s["pods"] if p["name"] == "server")')
W_VIP=$(status_py waypoint 'next(v["vip"] for v in s["services"] if v["name"] == "llm")')
W_PIDS=$(status_py waypoint '" ".join(str(d["pid"]) for d in s["daemons"] if d["name"] in ("sluice-ztunnel", "sluice-waypoint"))')
cp "$tmp/sidecarless/nginx.conf" "$w/nginx.conf"
sed -i "s|$tmp/sidecarless|$w|g" "$w/nginx.conf"
ex waypoint --detach --log "$w/nginx.log" bench/server -- nginx -c "$w/nginx.conf" -g 'daemon off;' >/dev/null
cat >"$(status_py waypoint 's["policiesDir"]')/bench-waypoint.yaml" <<YAML
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {name: bench, namespace: ai}
spec:
  model: bench
  backends: [{host: $W_SIP, port: 8080}]
---
apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: bench, namespace: ai}
spec:
  tenant: {header: bench}
  model: "*"
  limits: {tokensPerMinute: 1000000000, requestsPerMinute: 1000000000}
YAML
cat >"$w/chat.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-tenant"] = "bench"
wrk.body = '{"model":"bench","max_tokens":16,"messages":[{"role":"user","content":"Hello, how are you today?"}]}'
LUA
ok=0
for _ in $(seq 80); do  # the route is in force once its rule answers
    if ex waypoint bench/client -- curl -s -i --max-time 2 -H 'x-tenant: bench' -d \
        '{"model":"bench","messages":[{"role":"user","content":"hi"}]}' \
        "http://$W_VIP:8000/v1/chat/completions" | grep -q '^x-sluice-route: bench;'; then
        ok=1
        break
    fi
    sleep 0.25
done
[[ $ok == 1 ]] || { echo "waypoint: the bench route never answered" >&2; exit 1; }

# The workloads, interleaved by mode.
out="$tmp/out"
mkdir -p "$out"
for r in $(seq "$ROUNDS"); do
    echo "== round $r/$ROUNDS"
    for c in 1 32; do
        for m in "${MODES[@]}"; do
            # shellcheck disable=SC2046
            before="$(cpu_ticks $(proxy_pids "$m")) $(machine_busy_ticks)"
            ex "$m" bench/client -- timeout $((SECS + 30)) \
                wrk -t1 -c"$c" -d"${SECS}s" --latency "http://${SIP[$m]}:8080/" >"$out/$m-c$c-$r.txt"
            # shellcheck disable=SC2046
            echo "$before $(cpu_ticks $(proxy_pids "$m")) $(machine_busy_ticks) $(getconf CLK_TCK)" \
                >"$out/$m-c$c-$r.cpu"
        done
    done
    for rate in "${RATES[@]}"; do
        for m in "${MODES[@]}"; do
            ex "$m" bench/client -- timeout $((SECS + 30)) "$(realpath "$BUILD")/bin/sluice-bench-http-load" \
                --target "${SIP[$m]}:8080" --rate "$rate" --seconds "$SECS" --threads 8 --keep-alive \
                --out "$out/$m-rate$rate-$r.samples" >"$out/$m-rate$rate-$r.json" || true
        done
    done
    for m in "${MODES[@]}"; do
        ex "$m" bench/client -- timeout $((SECS + 30)) \
            iperf3 -c "${SIP[$m]}" -p 5201 -t "$SECS" -J >"$out/$m-iperf-$r.json"
        ex "$m" bench/client -- timeout $((SECS + 30)) \
            iperf3 -c "${LIP[$m]}" -p 5201 -t "$SECS" -J >"$out/$m-iperf-local-$r.json"
    done
    for c in 1 32; do
        for path in direct waypoint; do
            url="http://$W_SIP:8080/v1/chat/completions"
            [[ $path == waypoint ]] && url="http://$W_VIP:8000/v1/chat/completions"
            # shellcheck disable=SC2086
            before="$(cpu_ticks $W_PIDS) $(machine_busy_ticks)"
            ex waypoint bench/client -- timeout $((SECS + 30)) wrk -t1 -c"$c" -d"${SECS}s" --latency \
                -s "$w/chat.lua" "$url" >"$out/waypoint-$path-c$c-$r.txt"
            # shellcheck disable=SC2086
            echo "$before $(cpu_ticks $W_PIDS) $(machine_busy_ticks) $(getconf CLK_TCK)" \
                >"$out/waypoint-$path-c$c-$r.cpu"
        done
    done
done
fi

# Sidecarless: ztunnel RSS after the load (connections closed) and with CONNS held open.
if [[ $ONLY != pods ]]; then
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
fi

# Memory as pods per node grow: 1-node clusters of N idle pods, one mesh at a time. Every proxy
# is up and ready (sidecar ztunnels hold their pod's certificate, the node ztunnel has every pod
# enrolled); nothing is sent. The RSS sum counts each shared library page once per process; the
# total counts every process's private pages and the shared ones once (the largest process's
# shared part: the same library files), which is what the proxies take together.
mem_kib() {  # pid: "rss_kib private_kib shared_kib"
    awk '/^Rss:/{r=$2} /^Private_(Clean|Dirty):/{p+=$2} /^Shared_(Clean|Dirty):/{s+=$2}
         END{print r, p, s}' "/proc/$1/smaps_rollup"
}
mem_line() {  # mesh pods proxy-pids… : "mesh pods count rss_sum total"
    local mesh=$1 pods=$2 rss=0 private=0 shared=0 count=0 p r q x
    shift 2
    for p in "$@"; do
        read -r r q x <<<"$(mem_kib "$p")"
        rss=$((rss + r)) private=$((private + q)) count=$((count + 1))
        ((x > shared)) && shared=$x
    done
    echo "$mesh $pods $count $rss $((private + shared))"
}
scale_cfg=""
if [[ -z $ONLY || $ONLY == pods ]]; then
    scale="$tmp/scale"
    mkdir -p "$scale"
    : >"$scale/memory.txt"
    for pods in "${POD_COUNTS[@]}"; do
        for mesh in sidecar sidecarless haproxy; do
            echo "== memory: $mesh, $pods pods"
            {
                echo "name: scale
nodes: 1
namespaces:
  - name: bench
    labels: {istio.io/dataplane-mode: ambient}
pods:"
                for i in $(seq "$pods"); do echo "  - {name: pod-$i, namespace: bench, node: 0}"; done
            } >"$scale/cluster.yaml"
            "$TB" up --name "$SCALE_NAME" --spec "$scale/cluster.yaml" \
                --mesh "$([[ $mesh == haproxy ]] && echo none || echo "$mesh")" >"$scale/up.log"
            pod_names=$("$TB" status --name "$SCALE_NAME" --json |
                python3 -c 'import json,sys; print(" ".join(p["namespace"] + "/" + p["name"] for p in json.load(sys.stdin)["pods"]))')
            case $mesh in
                sidecar)
                    # shellcheck disable=SC2046
                    mem_line sidecar "$pods" $(daemon_pids "$SCALE_NAME" sluice-ztunnel) >>"$scale/memory.txt" ;;
                sidecarless)
                    enrolled=0
                    for _ in $(seq 100); do
                        enrolled=$(ex_scale --node node0 -- "$BUILD/bin/sluicectl" workloads --json 2>/dev/null |
                            python3 -c 'import json,sys; print(len(json.load(sys.stdin)["enrolled"]))' 2>/dev/null || echo 0)
                        [[ $enrolled -ge $pods ]] && break
                        sleep 0.2
                    done
                    [[ $enrolled -ge $pods ]] ||
                        { echo "memory: the node ztunnel has $enrolled of $pods pods" >&2; exit 1; }
                    # shellcheck disable=SC2046
                    mem_line sidecarless-ztunnel "$pods" $(daemon_pids "$SCALE_NAME" sluice-ztunnel) >>"$scale/memory.txt"
                    # shellcheck disable=SC2046
                    mem_line sidecarless-agent "$pods" $(daemon_pids "$SCALE_NAME" sluice-agent) >>"$scale/memory.txt" ;;
                haproxy)
                    # One HAProxy per pod, both directions in one process as a sidecar has them:
                    # TLS origination out, TLS termination in. Certificates from the cluster's CA.
                    if [[ -z $scale_cfg ]]; then
                        "$BUILD/bin/sluice-ztunnel" ca create --dir "$scale/ca" >/dev/null
                        "$BUILD/bin/sluice-ztunnel" ca mint --dir "$scale/ca" \
                            --identity spiffe://cluster.local/ns/bench/sa/default --out "$scale/pod" >/dev/null
                        cat "$scale/pod.crt" "$scale/pod.key" >"$scale/pod.pem"
                        cp "$scale/ca/ca.crt" "$scale/ca.crt"
                        scale_cfg="$scale/haproxy.cfg"
                        {
                            echo "$haproxy_global"
                            echo "listen out_8080
  bind 127.0.0.1:15001
  server s 198.18.0.2:8080 ssl crt $scale/pod.pem ca-file $scale/ca.crt verify required ssl-min-ver TLSv1.3
listen in_8080
  bind :15006 ssl crt $scale/pod.pem ca-file $scale/ca.crt verify required ssl-min-ver TLSv1.3
  server app 127.0.0.1:8080"
                        } >"$scale_cfg"
                    fi
                    hpids=()
                    for pod in $pod_names; do
                        hpids+=("$(ex_scale --detach --log "$scale/haproxy.log" "$pod" -- haproxy -db -f "$scale_cfg")")
                    done
                    for p in "${hpids[@]}"; do  # listening on :15006 (0x3A9E, its in_8080) or gone
                        for _ in $(seq 50); do
                            [[ -d /proc/$p ]] || { echo "memory: haproxy $p exited" >&2; cat "$scale/haproxy.log" >&2; exit 1; }
                            grep -q ':3A9E ' "/proc/$p/net/tcp" && break
                            sleep 0.1
                        done
                    done
                    sleep 1
                    mem_line haproxy "$pods" "${hpids[@]}" >>"$scale/memory.txt" ;;
            esac
            "$TB" down --name "$SCALE_NAME" >/dev/null
        done
    done
    if [[ $ONLY == pods ]]; then
        cat "$scale/memory.txt"
        exit 0
    fi
    cp "$scale/memory.txt" "$out/memory.txt"
fi
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
 "rates": [$(IFS=,; echo "${RATES[*]}")],
 "load_before": "$load_before", "load_after": "$load_after",
 "idle_rss_kib": {"sidecar": [${IDLE_RSS[sidecar]// /, }], "sidecarless": [${IDLE_RSS[sidecarless]// /, }]},
 "after_load_rss_kib": [${AFTER_RSS// /, }], "held": "$HELD", "held_rss_kib": [${HELD_RSS// /, }],
 "held_fds": [$(echo "$HELD_FDS" | xargs | sed 's/ /, /g')]}
JSON
/usr/bin/python3 bench/mesh/plot.py bench/results/mesh.json bench/results
cat bench/results/mesh.md
