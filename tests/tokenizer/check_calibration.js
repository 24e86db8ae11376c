// End-to-end check of the ColQwen3 calibration preset against the
// JavaScript reference tokenizer.
//   node check_calibration.js TOKENIZER_DIR QUERIES_JSONL DUMP_JSON NSAMPLES
// DUMP_JSON is calibration_dump's output for --preset colpali on
// QUERIES_JSONL. Checks: every sample, with its left padding removed, is the
// reference encoding of strip(query) + 10 x <|endoftext|> for a query of the
// sample's stratum; no query is used twice; padding is on the left with the
// pad id and mask 0; one common length = the longest sample; per_stratum
// matches the samples and the even-share rule.
"use strict";
const fs = require("fs");
const path = require("path");
const { loadTokenizer } = require("./encode_reference.js");

const [tokDir, queriesPath, dumpPath, nsamplesArg] = process.argv.slice(2);
const nsamples = Number(nsamplesArg);
const tok = loadTokenizer(path.join(tokDir, "tokenizer.json"),
                          path.join(tokDir, "tokenizer_config.json"));
const dump = JSON.parse(fs.readFileSync(dumpPath, "utf8"));
const expected = new Map();  // JSON ids -> source
const available = {};
for (const line of fs.readFileSync(queriesPath, "utf8").split("\n")) {
  if (!line.trim()) continue;
  const { query, source } = JSON.parse(line);
  const ids = tok.encode(query.trim() + "<|endoftext|>".repeat(10),
                         { add_special_tokens: true });
  expected.set(JSON.stringify(ids), source);
  available[source] = (available[source] ?? 0) + 1;
}
const fail = (msg) => { console.error(`FAIL: ${msg}`); process.exit(1); };
const pad = tok.model.tokens_to_ids.get("<|endoftext|>");
if (dump.pad_token_id !== pad) fail(`pad id ${dump.pad_token_id} != ${pad}`);
if (dump.samples.length !== nsamples) fail(`${dump.samples.length} samples`);
const used = new Set();
const counts = {};
let longest = 0;
const L = dump.samples[0].input_ids.length;
for (const [i, s] of dump.samples.entries()) {
  if (s.input_ids.length !== L || s.attention_mask.length !== L) {
    fail(`sample ${i}: length ${s.input_ids.length}, expected ${L}`);
  }
  const real = s.attention_mask.indexOf(1);
  if (real < 0 || s.attention_mask.slice(real).some((m) => m !== 1) ||
      s.input_ids.slice(0, real).some((id) => id !== pad)) {
    fail(`sample ${i}: not left padded with ${pad}`);
  }
  const key = JSON.stringify(s.input_ids.slice(real));
  longest = Math.max(longest, L - real);
  if (!expected.has(key)) fail(`sample ${i}: ids differ from the reference`);
  if (expected.get(key) !== s.stratum) fail(`sample ${i}: wrong stratum`);
  if (used.has(key)) fail(`sample ${i}: query used twice`);
  used.add(key);
  counts[s.stratum] = (counts[s.stratum] ?? 0) + 1;
}
if (longest !== L) fail(`common length ${L} != longest sample ${longest}`);
const share = Math.floor(nsamples / Object.keys(available).length);
for (const [source, n] of Object.entries(available)) {
  const got = counts[source] ?? 0;
  if (got !== (dump.per_stratum[source] ?? 0)) fail(`per_stratum ${source}`);
  if (got < Math.min(share, n)) fail(`${source}: ${got} < share ${share}`);
}
console.log(`calibration preset: ${nsamples} samples match the reference ` +
            `(L=${L}, per source ${JSON.stringify(counts)}, ` +
            `sha256 ${dump.content_sha256})`);
