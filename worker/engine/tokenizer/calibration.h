#ifndef ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_CALIBRATION_H_
#define ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_CALIBRATION_H_
// The calibration stage: reads local data (never the network), selects
// samples deterministically, applies a template, tokenizes with the native
// Tokenizer and pads to one common length. Everything is validated before
// any GPU time is spent; every error names the file, line and field.
// Full description: docs/calibration.md.
//
// Determinism: selection uses std::mt19937_64 seeded with `seed` and a
// Fisher-Yates shuffle written here (not std::shuffle, whose algorithm is
// implementation-defined), so the same data + options give the same samples
// on every platform. content_sha256 hashes the resolved ids and masks.
//
// Thread safety: BuildCalibrationSet is a pure function of its options and
// the files it reads; it may run concurrently with itself.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace roundhouse::calibration {

struct CalibrationOptions {
  // A .jsonl file (one JSON object per line), a plain-text file (one sample
  // per non-empty line) or a directory (every *.jsonl / *.json / *.txt file
  // below it, in byte-wise sorted path order). Required. Used as given:
  // resolving a path relative to the model folder is the caller's job.
  std::string path;
  // "" (guess: directory -> "dir", *.jsonl / *.json -> "jsonl", else
  // "text"), "jsonl", "text" or "dir".
  std::string format;
  // JSONL field. "" = "input_ids" if the first record has it, else "text".
  // A field holding a list of integers is pre-tokenized data (used as is,
  // no template other than padding/packing); a string field is tokenized.
  std::string field;
  // "random" (uniform without replacement) or "stratified" (by
  // stratify_column: an even share per value, the remainder filled at
  // random from what is left; counts in CalibrationSet::per_stratum).
  std::string selection = "random";
  std::string stratify_column;
  // "raw" (text as is, tokenizer's special tokens), "colqwen3_query"
  // (prefix + strip(text) + 10 x "<|endoftext|>", left padding) or "pack"
  // (all selected documents concatenated and cut into seqlen chunks).
  std::string templ = "raw";
  std::string query_prefix;  // colqwen3_query only; default "" (models §1.7)
  int nsamples = 128;        // tuning samples, > 0
  int seqlen = 2048;         // tokens, > 0; longer samples are truncated
  uint64_t seed = 42;
  // Fewer usable samples than nsamples (+ eval_samples) is an error unless
  // this is true (then every usable sample is taken).
  bool allow_fewer = false;
  // The reference AutoRound filter: drop samples with fewer than seqlen
  // tokens, and those whose token at seqlen-1 occurs more than seqlen/2
  // times in the first seqlen tokens. Not applied by "pack" (its chunks are
  // always full).
  bool drop_short = false;
  // Folder holding tokenizer.json (+ tokenizer_config.json for pad/bos/eos).
  // Required for text data; optional for input_ids data (pad id only).
  std::string tokenizer_dir;
  // Extra held-out samples, disjoint from the tuning samples, selected the
  // same way after them.
  int eval_samples = 0;
  // Pad id override; -1 = from tokenizer_config.json's pad_token, else its
  // eos_token, else 0.
  int32_t pad_token_id = -1;
};

struct Sample {
  std::vector<int32_t> input_ids;
  std::vector<int8_t> attention_mask;  // 1 = real token, 0 = padding
  std::string stratum;                 // value of stratify_column, or ""
};

struct CalibrationSet {
  std::vector<Sample> samples;
  std::vector<Sample> eval_samples;
  std::map<std::string, int> per_stratum;  // tuning samples per value
  // Lower-case hex sha256 over the resolved ids + masks of samples and
  // eval_samples (format in docs/calibration.md).
  std::string content_sha256;
  int32_t pad_token_id = 0;
  int64_t records_read = 0;  // records (lines / objects) in the source
  // Usable records examined (records are tokenized lazily, in selection
  // order). Exact when fewer than requested were found; for "pack" it is
  // the number of documents consumed.
  int64_t records_usable = 0;
};

// All samples (tuning and eval separately) are padded to ONE common length
// L <= seqlen (L = longest selected sample, truncated to seqlen): right
// padding for raw/pack, left padding for colqwen3_query.
absl::StatusOr<CalibrationSet> BuildCalibrationSet(
    const CalibrationOptions& options);

// The preset of the ColQwen3 plan: vidore/colpali_train_set queries from a
// local JSONL export, 256 stratified by "source", seqlen 512, seed 42,
// colqwen3_query template, field "query".
CalibrationOptions ColpaliTrainSetPreset(std::string jsonl_path,
                                         std::string tokenizer_dir);

}  // namespace roundhouse::calibration

#endif  // ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_CALIBRATION_H_
