#!/usr/bin/env node
// Drives a waypoint with the official `openai` npm SDK, as an application would, and prints one
// JSON object with what the SDK parsed: chat (plain and streamed, with and without
// stream_options.include_usage), embeddings, the model list, and the RateLimitError a tenant over
// its token budget gets. The waypoint test compares it with what the backend emulator sent.
//   node openai_sdk_client.cjs <sdk dir (has node_modules/openai)> <base URL>
"use strict";
const path = require("path");

const [sdkDir, baseURL] = process.argv.slice(2);
const { OpenAI, RateLimitError } = require(path.join(sdkDir, "node_modules", "openai"));

const messages = [{ role: "user", content: "Say hello to the mesh" }];

async function collect(stream) {
    const out = { chunks: 0, content: "", usage: null, finish_reason: null };
    for await (const chunk of stream) {
        out.chunks += 1;
        for (const choice of chunk.choices) {
            out.content += choice.delta?.content ?? "";
            out.finish_reason = choice.finish_reason ?? out.finish_reason;
        }
        if (chunk.usage) out.usage = chunk.usage;
    }
    return out;
}

async function main() {
    // No retries: every status the waypoint answers reaches this script as it is.
    const big = new OpenAI({ apiKey: "sk-big", baseURL, maxRetries: 0, timeout: 10000 });
    const small = new OpenAI({ apiKey: "sk-small", baseURL, maxRetries: 0, timeout: 10000 });
    const out = {};

    const chat = await big.chat.completions.create({ model: "gpt-4o", messages, max_tokens: 5 });
    out.chat = {
        content: chat.choices[0].message.content,
        finish_reason: chat.choices[0].finish_reason,
        usage: chat.usage,
    };
    out.stream = await collect(
        await big.chat.completions.create({ model: "gpt-4o", messages, max_tokens: 5, stream: true }));
    out.stream_with_usage = await collect(await big.chat.completions.create({
        model: "gpt-4o", messages, max_tokens: 5, stream: true,
        stream_options: { include_usage: true },
    }));
    const emb = await big.embeddings.create({
        model: "text-embedding-3-small", input: ["a b c", "d e"],
    });
    out.embeddings = {
        count: emb.data.length,
        dimensions: emb.data[0].embedding.length,
        first: emb.data[1].embedding[0],
        usage: emb.usage,
    };
    out.models = [];
    for await (const m of big.models.list()) out.models.push(m.id);

    // The small tenant's budget admits two of these; the third must be a RateLimitError.
    out.small = [];
    for (let i = 0; i < 4; i++) {
        try {
            await small.chat.completions.create({ model: "gpt-4o", messages, max_tokens: 150 });
            out.small.push({ status: 200 });
        } catch (err) {
            if (!(err instanceof RateLimitError)) throw err;
            out.small.push({
                status: err.status,
                rate_limit_error: true,
                code: err.code,
                type: err.type,
                retry_after: err.headers.get("retry-after"),
                limit_tokens: err.headers.get("x-ratelimit-limit-tokens"),
            });
            break;
        }
    }
    console.log(JSON.stringify(out));
}

main().catch((err) => {
    // A connection error's reason (a refused certificate, …) is down its chain of causes.
    let causes = "";
    for (let c = err.cause; c; c = c.cause) causes += `\ncaused by: ${c.code ?? ""} ${c.message ?? c}`;
    console.error(`openai_sdk_client: ${err.stack ?? err}${causes}`);
    process.exit(1);
});
