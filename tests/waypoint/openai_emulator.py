#!/usr/bin/env python3
"""TEST FIXTURE: an OpenAI-compatible model-server emulator for sluice's waypoint tests.

Not a model and not part of sluice: it answers /v1/chat/completions, /v1/completions and
/v1/embeddings with deterministic text, streams Server-Sent Events with a configurable delay per
token, reports `usage`, fails on demand and serves vLLM-style /metrics. Usage counts are this
emulator's own (prompt: 3 per message + 1 per whitespace-separated word; completion: tokens
sent), deliberately different from the waypoint's BPE estimate so tests can tell them apart.

  openai_emulator.py --port 0 --name a [--token-delay-ms 20] [--fail-status 503]
Prints "PORT <n>" on stdout once listening. POST /emulator/config {"fail_status":…,
"token_delay_ms":…} changes behaviour at runtime; GET /emulator/stats reports counters.
"""
import argparse
import base64
import json
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

state = {"fail_status": 0, "token_delay_ms": 0, "first_token_delay_ms": 0, "completion_tokens": 5,
         "requests": 0, "streams_aborted": 0, "include_usage_seen": 0, "waiting": 0,
         "kv_cache_usage": 0.1, "early_hints": 0, "last_body": ""}
lock = threading.Lock()
NAME = "emulator"


def prompt_tokens(body):
    if "messages" in body:
        n = 3
        for m in body["messages"]:
            content = m.get("content", "")
            n += 3 + (len(content.split()) if isinstance(content, str) else 0)
        return n
    value = body.get("prompt", body.get("input", ""))
    if isinstance(value, list):
        return sum(len(str(v).split()) for v in value)
    return len(str(value).split())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Stream events are small writes: with Nagle on, each waits for the ACK of the one before
    # (40 ms behind a delayed ACK), as model servers that stream (vLLM's uvicorn) do not.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def send_json(self, status, obj, extra=None):
        data = json.dumps(obj, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-backend", NAME)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/emulator/stats":
            with lock:
                self.send_json(200, dict(state, name=NAME))
        elif self.path == "/metrics":
            with lock:
                text = ("vllm:num_requests_waiting{model_name=\"emulator\"} %d\n"
                        "vllm:kv_cache_usage_perc{model_name=\"emulator\"} %g\n"
                        % (state["waiting"], state["kv_cache_usage"]))
            data = text.encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path in ("/emulator/status/204", "/emulator/status/304"):
            # Bodiless answers without a Content-Length, as servers send them.
            self.send_response(int(self.path.rsplit("/", 1)[1]))
            self.send_header("x-backend", NAME)
            self.end_headers()
        else:
            self.send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_HEAD(self):
        # The length the GET would have, no body.
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "42")
        self.send_header("x-backend", NAME)
        self.end_headers()

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length)
        if self.path == "/emulator/config":
            with lock:
                state.update(json.loads(raw))
            self.send_json(200, state)
            return
        with lock:
            state["requests"] += 1
            state["last_body"] = raw.decode("utf-8", "replace")
            fail = state["fail_status"]
            early_hints = state["early_hints"]
        for _ in range(early_hints):
            # Interim answers before the real one, as a server with 103 Early Hints sends them.
            self.send_response_only(103)
            self.send_header("link", "</v1/models>; rel=preload")
            self.end_headers()
        if fail:
            self.send_json(fail, {"error": {"message": "emulated failure", "type": "server_error",
                                            "param": None, "code": None}})
            return
        body = json.loads(raw)
        model = body.get("model", "")
        prompt = prompt_tokens(body)
        if self.path == "/v1/embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            vectors = [[0.1 * (i + 1), 0.2, 0.3] for i in range(len(inputs))]
            if body.get("encoding_format") == "base64":
                # As OpenAI does: little-endian float32s, base64 (the npm SDK's default ask).
                vectors = [base64.b64encode(struct.pack("<%df" % len(v), *v)).decode()
                           for v in vectors]
            data = [{"object": "embedding", "index": i, "embedding": v}
                    for i, v in enumerate(vectors)]
            self.send_json(200, {"object": "list", "data": data, "model": model,
                                 "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})
            return
        n = min(state["completion_tokens"], body.get("max_tokens", body.get("max_completion_tokens", 1 << 30)))
        chat = self.path == "/v1/chat/completions"
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        if not body.get("stream"):
            text = "".join("tok%d " % i for i in range(n))
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                      if chat else {"index": 0, "text": text, "finish_reason": "stop"})
            self.send_json(200, {"id": "cmpl-emulated", "object": "chat.completion" if chat else "text_completion",
                                 "created": 0, "model": model, "choices": [choice], "usage": usage})
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if include_usage:
            with lock:
                state["include_usage_seen"] += 1
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("x-backend", NAME)
        self.end_headers()
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(payload):
            data = ("data: " + (payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))) + "\n\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            time.sleep(state["first_token_delay_ms"] / 1000)
            for i in range(n):
                if i:
                    time.sleep(state["token_delay_ms"] / 1000)
                delta = {"index": 0, "delta": {"content": "tok%d " % i}, "finish_reason": None} if chat \
                    else {"index": 0, "text": "tok%d " % i, "finish_reason": None}
                chunk = {"id": "cmpl-emulated", "object": obj, "created": 0, "model": model, "choices": [delta]}
                if include_usage:
                    chunk["usage"] = None
                event(chunk)
            final = {"id": "cmpl-emulated", "object": obj, "created": 0, "model": model,
                     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"} if chat
                                 else {"index": 0, "text": "", "finish_reason": "stop"}]}
            event(final)
            if include_usage:
                event({"id": "cmpl-emulated", "object": obj, "created": 0, "model": model, "choices": [],
                       "usage": usage})
            event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            with lock:
                state["streams_aborted"] += 1
            self.close_connection = True


def main():
    global NAME
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="emulator")
    parser.add_argument("--token-delay-ms", type=int, default=0)
    parser.add_argument("--fail-status", type=int, default=0)
    parser.add_argument("--max-seconds", type=int, default=600, help="exit after this long")
    args = parser.parse_args()
    NAME = args.name
    state["token_delay_ms"] = args.token_delay_ms
    state["fail_status"] = args.fail_status
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print("PORT %d" % server.server_address[1], flush=True)
    threading.Timer(args.max_seconds, server.shutdown).start()
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
