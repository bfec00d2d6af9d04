-- wrk script: a small non-streamed chat completion request, the same one for every mode.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-tenant"] = "bench"
wrk.body = '{"model":"gpt-4o","max_tokens":16,"messages":[{"role":"user","content":"Hello, how are you today?"}]}'
