#ifndef ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_TOKENIZER_TESTDATA_H_
#define ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_TOKENIZER_TESTDATA_H_
// A hand-written byte-level BPE tokenizer.json for unit tests (test-only
// header). Vocabulary (ids): <unk>0 a1 b2 c3 Ġ4 ab5 abc6 Ġa7 Ġab8, added
// <|endoftext|>9 (special), <x>10 (lstrip), Ã12 ©13 Ã©14 ("é" in bytes).
// Merges by rank: (a,b) (ab,c) (Ġ,a) (Ġ,ab) (Ã,©). Normalizer NFC, the
// Qwen split regex, ByteLevel(use_regex=false), post-processor ByteLevel.
#include <string>

namespace roundhouse::tokenizer::testdata {

inline std::string SmallTokenizerJson(
    const std::string& post_processor = R"({"type": "ByteLevel"})") {
  return std::string(R"({
  "version": "1.0",
  "added_tokens": [
    {"id": 9, "content": "<|endoftext|>", "single_word": false,
     "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 10, "content": "<x>", "lstrip": true, "rstrip": false,
     "special": false},
    {"id": 11, "content": "<s>", "special": true}
  ],
  "normalizer": {"type": "NFC"},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex":
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|)"
         R"(\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|)"
         R"(\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
     "use_regex": false}]},
  "post_processor": )") +
         post_processor + R"(,
  "decoder": {"type": "ByteLevel"},
  "model": {
    "type": "BPE", "unk_token": "<unk>", "byte_fallback": false,
    "ignore_merges": false,
    "vocab": {"<unk>": 0, "a": 1, "b": 2, "c": 3, "\u0120": 4, "ab": 5,
              "abc": 6, "\u0120a": 7, "\u0120ab": 8, "\u00c3": 12,
              "\u00a9": 13, "\u00c3\u00a9": 14},
    "merges": [["a", "b"], ["ab", "c"], ["\u0120", "a"], ["\u0120", "ab"],
               ["\u00c3", "\u00a9"]]
  }
})";
}

}  // namespace roundhouse::tokenizer::testdata

#endif  // ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_TOKENIZER_TESTDATA_H_
