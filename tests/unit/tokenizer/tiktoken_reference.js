// Reference side of tokenizer_exactness_test: encodes each document of a JSON array with the
// npm `tiktoken` package itself (encode_ordinary) and prints a JSON array of token id arrays.
// Usage: node tiktoken_reference.js <tiktoken package dir> <encoding> <corpus.json>
"use strict";
const [pkg, encodingName, corpusFile] = process.argv.slice(2);
const { get_encoding } = require(pkg);
const fs = require("fs");
const docs = JSON.parse(fs.readFileSync(corpusFile, "utf8"));
const enc = get_encoding(encodingName);
const out = docs.map((d) => Array.from(enc.encode_ordinary(d)));
enc.free();
fs.writeFileSync(1, JSON.stringify(out));
