// Tokens per second of the JavaScript reference on a corpus file, the
// counterpart of the native `tokenizer_bench` (same file, same add-special
// setting: none).
//   node bench.js TOKENIZER_JSON TOKENIZER_CONFIG CORPUS [REPEATS=5]
"use strict";
const { loadTokenizer, readCorpus } = require("./encode_reference.js");
const [jsonPath, configPath, corpusPath, repeatsArg] = process.argv.slice(2);
const repeats = Number(repeatsArg ?? 5);
let t0 = process.hrtime.bigint();
const tok = loadTokenizer(jsonPath, configPath);
console.log(`load_seconds ${Number(process.hrtime.bigint() - t0) / 1e9}`);
const docs = readCorpus(corpusPath);
console.log(`documents ${docs.length} bytes ${docs.reduce(
    (n, d) => n + Buffer.byteLength(d), 0)}`);
let best = 0;
for (let r = 0; r < repeats; ++r) {
  let tokens = 0;
  t0 = process.hrtime.bigint();
  for (const d of docs) tokens += tok.encode(d, { add_special_tokens: false }).length;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  best = Math.max(best, tokens / s);
  console.log(`repeat ${r} tokens ${tokens} seconds ${s} tokens_per_second ${tokens / s}`);
}
console.log(`best_tokens_per_second ${best}`);
