#!/usr/bin/env bash
# Waypoint proxy overhead on loopback, all modes back-to-back in one invocation:
#   direct    wrk → nginx (a static OpenAI-shaped JSON reply: the backend)
#   waypoint  wrk → sluice-waypoint (budgets, usage, route on; 1 worker) → nginx
#   haproxy   wrk → HAProxy (plain HTTP proxy, 1 thread) → nginx
#   waypoint-tls, haproxy-tls  the same two proxies terminating TLS 1.3 (HTTP/1.1; wrk keeps its
#             connections, so this is the cost of the records, not of handshakes)
# Each mode: 1 connection (latency distribution) and 32 connections (max requests/s), 5 s each.
# The proxy runs pinned to CPU 1, wrk and nginx to CPU 0. Writes bench/results/waypoint.{json,md}.
# Usage: bench/waypoint/run.sh [build dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
SECONDS_PER_RUN=${SLUICE_BENCH_SECONDS:-5}
# shellcheck source=bench/waypoint/lib.sh
source bench/waypoint/lib.sh

NGINX_PORT=$(free_port); WP_PORT=$(free_port); HA_PORT=$(free_port)
WP_TLS_PORT=$(free_port); HA_TLS_PORT=$(free_port)
# One server certificate (ECDSA P-256, self-signed) for both TLS proxies.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench \
    -keyout "$tmp/server.key" -out "$tmp/server.crt" 2>/dev/null
cat "$tmp/server.crt" "$tmp/server.key" >"$tmp/haproxy.pem"
mkdir -p "$tmp/nginx/logs"
cat >"$tmp/nginx/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $tmp/nginx; proxy_temp_path $tmp/nginx; fastcgi_temp_path $tmp/nginx;
  uwsgi_temp_path $tmp/nginx; scgi_temp_path $tmp/nginx;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      default_type application/json;
      return 200 '{"id":"cmpl-bench","object":"chat.completion","created":0,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"I am fine."},"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":4,"total_tokens":18}}';
    }
  }
}
CONF
taskset -c 0 nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" &
pids+=($!)

bench_config "127.0.0.1:$NGINX_PORT" >"$tmp/waypoint.yaml"
taskset -c 1 "$BUILD/bin/sluice-waypoint" --config "$tmp/waypoint.yaml" --listen "127.0.0.1:$WP_PORT" \
    --metrics-listen 127.0.0.1:0 --ready-listen 127.0.0.1:0 --log-level warn &
WP_PID=$!
pids+=($WP_PID)
# The TLS modes use a waypoint of their own, so the plain one's RSS is what it was before the TLS
# listener existed (OpenSSL's algorithm tables alone add ~3 MiB once a server context exists).
taskset -c 1 "$BUILD/bin/sluice-waypoint" --config "$tmp/waypoint.yaml" --listen 127.0.0.1:0 \
    --tls-listen "127.0.0.1:$WP_TLS_PORT" --tls-cert "$tmp/server.crt" --tls-key "$tmp/server.key" \
    --metrics-listen 127.0.0.1:0 --ready-listen 127.0.0.1:0 --log-level warn &
WP_TLS_PID=$!
pids+=($WP_TLS_PID)

cat >"$tmp/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$HA_PORT
  default_backend b
frontend f_tls
  bind 127.0.0.1:$HA_TLS_PORT ssl crt $tmp/haproxy.pem ssl-min-ver TLSv1.2 alpn http/1.1
  default_backend b
backend b
  server s1 127.0.0.1:$NGINX_PORT
CONF
taskset -c 1 haproxy -f "$tmp/haproxy.cfg" -db &
pids+=($!)

wait_port "$NGINX_PORT"; wait_port "$WP_PORT"; wait_port "$HA_PORT"
wait_port "$WP_TLS_PORT"; wait_port "$HA_TLS_PORT"

run() {  # mode port connections [scheme]
    taskset -c 0 wrk -t1 -c"$3" -d"${SECONDS_PER_RUN}s" --latency -s bench/waypoint/post.lua \
        "${4:-http}://127.0.0.1:$2/v1/chat/completions" >"$tmp/$1-c$3.txt"
}
for c in 1 32; do
    run direct "$NGINX_PORT" "$c"
    run waypoint "$WP_PORT" "$c"
    run haproxy "$HA_PORT" "$c"
done
for c in 1 32; do
    run waypoint-tls "$WP_TLS_PORT" "$c" https
    run haproxy-tls "$HA_TLS_PORT" "$c" https
done
RSS_KB=$(awk '/VmRSS/{print $2}' /proc/$WP_PID/status)
RSS_TLS_KB=$(awk '/VmRSS/{print $2}' /proc/$WP_TLS_PID/status)

machine="$(uname -srm), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
python3 bench/waypoint/report.py "$tmp" "$machine" "$RSS_KB" "$RSS_TLS_KB"
cat bench/results/waypoint.md
