// Encodes a corpus with the JavaScript reference tokenizer
// (@lenml/tokenizers, a fork of transformers.js) and writes one JSON array of
// ids per line.
//
//   node encode_reference.js TOKENIZER_JSON TOKENIZER_CONFIG CORPUS OUT
//        [--no-special]
//
// CORPUS: one entry per line, a JSON string or {"base64": "..."}; bytes are
// decoded with the WHATWG TextDecoder (invalid sequences -> U+FFFD), which is
// the rule the C++ tokenizer implements (worker/engine/tokenizer/tokenizer.h).
"use strict";
const fs = require("fs");
const path = require("path");
const { TokenizerLoader } = require(path.join(__dirname, "node_modules",
                                              "@lenml", "tokenizers"));

function loadTokenizer(jsonPath, configPath) {
  return TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(fs.readFileSync(jsonPath, "utf8")),
    tokenizerConfig: JSON.parse(fs.readFileSync(configPath, "utf8")),
  });
}

function readCorpus(file) {
  const decoder = new TextDecoder("utf-8");
  return fs.readFileSync(file, "utf8").split("\n").filter((l) => l.length)
      .map((line, i) => {
        const v = JSON.parse(line);
        if (typeof v === "string") return v;
        if (v && typeof v.base64 === "string") {
          return decoder.decode(Buffer.from(v.base64, "base64"));
        }
        throw new Error(`${file}:${i + 1}: expected a string or {base64}`);
      });
}

module.exports = { loadTokenizer, readCorpus };

if (require.main === module) {
  const [jsonPath, configPath, corpusPath, outPath, flag] =
      process.argv.slice(2);
  if (!outPath) {
    console.error("usage: node encode_reference.js TOKENIZER_JSON " +
                  "TOKENIZER_CONFIG CORPUS OUT [--no-special]");
    process.exit(2);
  }
  const tok = loadTokenizer(jsonPath, configPath);
  const special = flag !== "--no-special";
  const lines = readCorpus(corpusPath).map(
      (t) => JSON.stringify(tok.encode(t, { add_special_tokens: special })));
  fs.writeFileSync(outPath, lines.join("\n") + "\n");
}
