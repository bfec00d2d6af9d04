#!/usr/bin/env bash
# User-space instructions the waypoint spends per request, whole path (callgrind; unlike CPU time
# it does not move with the machine): one worker with usage, budget and route on, the OpenAI
# emulator (tests/waypoint/openai_emulator.py, a TEST FIXTURE) behind it, N requests one after
# the other on a keep-alive connection after a warm-up, counters zeroed in between. Prints
# instructions per request for streamed chats (3 tokens) and for plain chats, and the functions
# that cost most per streamed chat (inclusive).
#   bench/waypoint/request_instructions.sh [build dir] [N]      (default build, 300)
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
n=${2:-300}
. bench/waypoint/lib.sh

emulator=$(free_port)
gateway=$(free_port)
/usr/bin/python3 tests/waypoint/openai_emulator.py --port "$emulator" --name bench \
    --max-seconds 600 >/dev/null &
pids+=($!)
bench_config "127.0.0.1:$emulator" >"$tmp/waypoint.yaml"
valgrind --tool=callgrind --callgrind-out-file="$tmp/callgrind.out" \
    "$build/bin/sluice-waypoint" --config "$tmp/waypoint.yaml" --listen "127.0.0.1:$gateway" \
    --metrics-listen 127.0.0.1:0 --ready-listen 127.0.0.1:0 --log-level warn --workers 1 \
    2>"$tmp/valgrind.log" &
valgrind_pid=$!
pids+=("$valgrind_pid")
wait_port "$emulator"
wait_port "$gateway" 400  # valgrind starts slowly

# Sends `count` requests (stream: 1 or 0) one after the other; each is read to its end.
send() {
    /usr/bin/python3 - "$gateway" "$1" "$2" <<'PY'
import json, socket, sys
port, count, stream = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
body = json.dumps({"model": "gpt-4o", "max_tokens": 3, "stream": stream,
                   "messages": [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "Say hello to the mesh in three words."}]})
req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nx-tenant: bench\r\n"
       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
sock = socket.create_connection(("127.0.0.1", port), timeout=30)
buf = b""
for _ in range(count):
    sock.sendall(req)
    while True:
        if stream and b"\r\n0\r\n\r\n" in buf:
            buf = buf.split(b"\r\n0\r\n\r\n", 1)[1]
            break
        if not stream and b"\r\n\r\n" in buf:
            head, rest = buf.split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(rest) >= length:
                buf = rest[length:]
                break
        data = sock.recv(65536)
        if not data:
            sys.exit("connection closed")
        buf += data
PY
}

# Instructions of `count` requests of one kind, from zeroed counters; the dump is kept as
# $tmp/<name>.out.
measure() {
    callgrind_control -z "$valgrind_pid" >/dev/null 2>&1
    send "$2" "$3"
    callgrind_control -d "$valgrind_pid" >/dev/null 2>&1
    mv "$(ls -t "$tmp"/callgrind.out.* | head -1)" "$tmp/$1.out"
    callgrind_annotate "$tmp/$1.out" | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,
}

send 50 1
send 50 0
streamed=$(measure stream "$n" 1)
plain=$(measure plain "$n" 0)
echo "streamed chat (3 tokens): $((streamed / n)) instructions/request"
echo "plain chat:               $((plain / n)) instructions/request"
echo
echo "per streamed chat, inclusive, the costliest of ours and of the JSON libraries:"
callgrind_annotate --inclusive=yes "$tmp/stream.out" |
    sed -nE 's/^ *([0-9,]+) +\( *[0-9.]+%\) +[^:]*:(sluice::waypoint::[^(]*)\(.*/\1 \2/p' |
    awk -v n="$n" '!seen[$2]++ { c = $1; gsub(",", "", c); printf "%8d  %s\n", c / n, $2 }' |
    head -20
