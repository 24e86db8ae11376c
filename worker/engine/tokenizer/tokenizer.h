#ifndef ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_TOKENIZER_H_
#define ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_TOKENIZER_H_
// A native reader/encoder for Hugging Face `tokenizer.json` files of the
// byte-level BPE family (GPT-2 / Llama-3 / Qwen2 / Qwen3 style):
//   added tokens (special and non-special) matched before everything else,
//   normalizer (NFC, NFD, NFKC, NFKD, Lowercase, Sequence, or none; via
//   utf8proc), pre-tokenizer (ByteLevel and Split with the model's regex,
//   Sequence of them; regexes run through PCRE2 with Unicode properties),
//   model BPE with merges (ranks = merge order), post-processor
//   (ByteLevel = no-op for ids, TemplateProcessing single template,
//   Sequence).
// Unsupported components (e.g. a WordPiece model, a Metaspace
// pre-tokenizer) make LoadFromFile fail with a message naming the JSON path.
//
// Reference semantics: ids are those of the JavaScript implementation
// `@lenml/tokenizers` (a transformers.js fork), checked on the real Qwen3
// tokenizer.json by tests/tokenizer/check_reference.sh. Hence: the split
// regex's "(?i:'s|'t|...)" group is expanded to explicit case pairs, `\s`
// is ECMAScript's whitespace set, `\d`/`\w` are ASCII-only, added tokens
// match longest-first anywhere (their `single_word` and `normalized` flags
// are ignored, as by the reference). Unicode property tables are PCRE2's
// (Unicode 14 on Debian 12): characters assigned later may split
// differently (docs/calibration.md).
//
// Invalid UTF-8 rule: Encode() never fails on invalid UTF-8. Every maximal
// invalid subsequence is replaced by U+FFFD (REPLACEMENT CHARACTER) exactly
// as the WHATWG `TextDecoder("utf-8")` does (which is what a JavaScript
// caller sees after decoding bytes), and the resulting valid text is
// encoded. Use SanitizeUtf8() to obtain that text. Callers that must reject
// invalid input (the calibration loader) check with IsValidUtf8() first.
//
// Thread safety: a Tokenizer is immutable after LoadFromFile/LoadFromJson;
// Encode and all const methods may be called concurrently from any thread.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace roundhouse::tokenizer {

class Tokenizer {
 public:
  // Reads and validates `tokenizer_json_path`. Errors (missing file,
  // malformed JSON, unsupported component, bad merge) name the file and
  // the JSON field.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadFromFile(
      const std::string& tokenizer_json_path);
  // Same, from JSON text; `origin` is used in error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadFromJson(
      std::string_view json_text, const std::string& origin = "<memory>");

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text`. `add_special_tokens` applies the post-processor's
  // template (e.g. BOS for Llama; Qwen's template adds nothing). Invalid
  // UTF-8 is handled per the rule above; the only error is an internal
  // regex failure (PCRE2 match limit), reported with the byte offset.
  absl::StatusOr<std::vector<int32_t>> Encode(
      std::string_view text, bool add_special_tokens = true) const;

  // Id of a vocabulary entry or added token (exact string), if any.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The string of an id (vocabulary form, e.g. "Ġthe"), if any.
  std::optional<std::string> IdToToken(int32_t id) const;
  // 1 + the largest id of the vocabulary and the added tokens.
  int32_t vocab_size() const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// True iff `bytes` is well-formed UTF-8 (no surrogates, no overlongs,
// <= U+10FFFF). If not and `first_bad_offset` is non-null, it receives the
// byte offset of the first invalid sequence.
bool IsValidUtf8(std::string_view bytes, size_t* first_bad_offset = nullptr);

// `bytes` with every maximal invalid subsequence replaced by U+FFFD, exactly
// like WHATWG TextDecoder (the "maximal subpart" practice of Unicode 15
// §3.9). Returns the input unchanged when it is valid.
std::string SanitizeUtf8(std::string_view bytes);

}  // namespace roundhouse::tokenizer

#endif  // ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_TOKENIZER_H_
