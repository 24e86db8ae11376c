// node compare_ids.js CORPUS JS_IDS CC_IDS: exit 1 and print every differing
// entry (text and both id lists) when the id files differ.
"use strict";
const fs = require("fs");
const [corpus, a, b] = process.argv.slice(2);
const read = (f) => fs.readFileSync(f, "utf8").split("\n").filter((l) => l);
const texts = read(corpus), js = read(a), cc = read(b);
let bad = 0, tokens = 0;
if (js.length !== texts.length || cc.length !== texts.length) {
  console.error(`entry counts differ: corpus ${texts.length}, js ${js.length},` +
                ` c++ ${cc.length}`);
  process.exit(1);
}
for (let i = 0; i < texts.length; ++i) {
  tokens += JSON.parse(js[i]).length;
  if (js[i] !== cc[i]) {
    if (++bad <= 10) {
      console.error(`entry ${i + 1} differs:\n  text ${texts[i].slice(0, 300)}` +
                    `\n  js  ${js[i].slice(0, 400)}\n  c++ ${cc[i].slice(0, 400)}`);
    }
  }
}
if (bad) {
  console.error(`${bad} of ${texts.length} entries differ`);
  process.exit(1);
}
console.log(`identical ids on ${texts.length} entries (${tokens} tokens)`);
